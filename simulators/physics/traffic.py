"""Urban arterial traffic: a daily demand profile, BPR congestion and incident queues.

- Demand is arriving traffic over road capacity (the v/c ratio): low at night, a daytime plateau,
  a morning peak near 08:00 and a stronger evening one near 17:45 (local time).
- Speed follows the BPR link performance function of the US Bureau of Public Roads,
  ``v = v_free / (1 + alpha (v/c)^beta)`` with the classic alpha 0.15, beta 4: nearly free flow
  below capacity, falling fast above it.
- Below capacity the detector sees the demand flow at that speed (density = flow / speed). Above
  it the detector stands in a queue: density follows the congested branch of a triangular
  fundamental diagram, ``q = w (k_jam - k)``, so flow falls and density climbs to jam density
  as speed falls. Occupancy is density times the effective vehicle length (vehicle plus loop):
  it rises as speed falls.
- An incident (collision, stalled vehicle) blocks part of the road: capacity drops there and a
  queue grows at the shockwave speed, then dissolves after the road is cleared. Without a road
  graph, every detector within the queue's length counts as in it (a queue at a junction backs
  up all its approaches); it stops growing at :data:`QUEUE_MAX_KM`.
"""

from __future__ import annotations

import math

BPR_ALPHA = 0.15
BPR_BETA = 4.0
CAPACITY_VEH_H_LANE = 1500.0  # signalised urban arterial
EFFECTIVE_LENGTH_M = 6.5  # vehicle (about 4.5 m) plus loop length
JAM_DENSITY = 150.0  # veh/km/lane, a standing queue
BACKWARD_WAVE_KM_H = 15.0  # w: how fast a disturbance travels back through a queue
# Shockwave speeds of a typical arterial (q-k differences): the tail of the queue behind an
# incident grows upstream at the first while inflow exceeds the reduced capacity; once the road
# is cleared its front moves back upstream at the second, so the queue dissolves from the site.
QUEUE_GROWTH_KM_H = 4.0
QUEUE_RECOVERY_KM_H = 15.0
# Beyond this the queue stops growing: drivers divert through the side streets of a street grid.
QUEUE_MAX_KM = 0.8


def _bump(hour: float, centre: float, width: float) -> float:
    # Circular in the day, so a peak near midnight would wrap correctly.
    d = (hour - centre + 12) % 24 - 12
    return math.exp(-0.5 * (d / width) ** 2)


def _logistic(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def daily_demand(hour: float) -> float:
    """Demand over capacity at a local hour (0-24) on an ordinary weekday."""
    daytime = _logistic((hour - 6.5) * 3) * _logistic((21.5 - hour) * 2)
    return 0.12 + 0.5 * daytime + 0.33 * _bump(hour, 8.0, 0.9) + 0.4 * _bump(hour, 17.75, 1.1)


def bpr_speed_kmh(free_kmh: float, ratio: float) -> float:
    return float(free_kmh / (1 + BPR_ALPHA * max(0.0, ratio) ** BPR_BETA))


def flow_and_density(ratio: float, speed_kmh: float,
                     capacity_veh_h_lane: float) -> tuple[float, float]:
    """(flow veh/h/lane, density veh/km/lane) a detector sees at a demand ``ratio``."""
    if ratio <= 1:
        flow = capacity_veh_h_lane * max(0.0, ratio)
        return flow, flow / max(speed_kmh, 1.0)
    density = BACKWARD_WAVE_KM_H * JAM_DENSITY / (speed_kmh + BACKWARD_WAVE_KM_H)
    return min(capacity_veh_h_lane, density * speed_kmh), density


def occupancy_pct(density_veh_km_lane: float) -> float:
    return min(100.0, density_veh_km_lane * EFFECTIVE_LENGTH_M / 10)


def queue_extent_km(since_start_s: float, duration_s: float) -> tuple[float, float]:
    """(front, tail): distances from an incident's site between which traffic queues,
    ``since_start_s`` after it happened and with the road cleared after ``duration_s``."""
    if since_start_s < 0:
        return (0.0, 0.0)
    tail = min(QUEUE_MAX_KM, QUEUE_GROWTH_KM_H * min(since_start_s, duration_s) / 3600)
    front = QUEUE_RECOVERY_KM_H * max(0.0, since_start_s - duration_s) / 3600
    return (front, tail) if front < tail else (0.0, 0.0)


def queue_dissolves_s(duration_s: float) -> float:
    """Seconds after the clearance until the last of the queue has gone."""
    tail = min(QUEUE_MAX_KM, QUEUE_GROWTH_KM_H * duration_s / 3600)
    return tail / QUEUE_RECOVERY_KM_H * 3600
