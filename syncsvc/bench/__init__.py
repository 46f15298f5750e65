"""``syncsvc bench``: benchmark scenarios driven against the sandbox EHR.

The sandbox runs in a process of its own (on a second core, as an EHR would be elsewhere);
syncsvc's real sync engine runs in the benchmarking process against SQLite or PostgreSQL. Every
figure is a median over rounds with its min and max, and peers run in the same rounds.
"""
