"""usam: fast uncertainty estimators for SAM 2."""
