"""Experts: the LLMs a query can be routed to, behind one small interface."""
