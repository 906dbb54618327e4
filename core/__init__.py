"""cuffwatch core: the domain model, the contract's topics, the configuration.

The bottom layer: every stage imports it; it imports no other stage.
"""
