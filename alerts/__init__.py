"""cuffwatch: alerts stage."""
