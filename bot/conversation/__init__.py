"""The engine: one inbound message, one transaction (turn, decision, actions, identity linking)."""
