"""Unit tier: in-process tests, no server, nothing listening, no `cuffwatch` child process."""
