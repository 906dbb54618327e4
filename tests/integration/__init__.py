"""Integration tier: real servers, receivers and `cuffwatch` child processes."""
