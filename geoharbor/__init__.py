"""geoharbor's Python client, ``geoharbor.client`` (the server lives in ``server`` and ``providers``)."""
