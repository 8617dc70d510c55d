"""The web dashboard: overview, queue pages, stress tests, exclusions and tickets, with /health and
/metrics on the same server (`healthrobot dashboard`; `healthrobot demo` starts one too).

`dashboard.app.create_app(config, sessions, clock)` builds it; `dashboard.queries` reads the
database, `dashboard.figures` draws, `dashboard.auth` decides who may see and change what.
"""
