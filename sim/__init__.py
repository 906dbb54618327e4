"""cuffwatch simulator and demo: a squad of cuffs on MQTT, and the whole product in one process."""
