"""Geo: zones and the spatial index, pure.

Loads zones from GeoJSON (geopandas), validates their geometry, converts GCJ-02 to WGS 84 where
source data needs it, and assigns points to zones through a shapely STRtree.
"""
