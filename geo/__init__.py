"""Geo: zones and the spatial index, pure.

Loads zones from GeoJSON, GeoPackage or Shapefile (geopandas) in any CRS, repairs what
``make_valid`` can and rejects the rest, converts GCJ-02 to WGS 84 where source data needs it,
assigns points to zones through a shapely STRtree (many at once), and says which grid cell,
street and district a position or zone belongs to.
"""
