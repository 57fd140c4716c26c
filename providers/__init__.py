"""Data access for geoharbor: PostGIS, GeoPackage and WFS behind one query model."""
