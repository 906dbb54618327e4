"""cuffwatch operations tools: the command line, the installation check, broker ACL generation."""
