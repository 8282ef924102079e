"""derm_exp: HAM10000 experiment platform (research/education only; not a medical device)."""
