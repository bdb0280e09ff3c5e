"""The physics the simulated devices follow, pure and clock-free: rain, runoff, traffic, falls.

Each module states its model, its sources and its assumptions; the devices in
``simulators/devices`` only add what a sensor does to the truth (noise, resolution, faults).
"""
