"""cuffwatch: gateway stage."""
