"""`make smoke`: the whole loop on random-weight models, offline."""
