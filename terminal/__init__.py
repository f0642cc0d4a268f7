"""posterm: the POS terminal emulator (cup-pos contract).

core (sans-IO messages and outcomes), pinpad (keys, PIN blocks, MACs), state (SQLite),
transport (trio TCP), session (the online discipline), load (many terminals), cli (posterm).
"""
