"""`widgetry bench`: a load and benchmark tool for the service, in the spirit of pgbench and redis-benchmark.

It writes commands over HTTP, watches their events arrive over SSE, and reports throughput end to end, latency
at each step, memory, and two baselines measured on the same Redis and database: plain SAQ with no-op jobs, and
the same changes written straight through the service layer.

- `command`: the command line;
- `runner`: one run, phase by phase;
- `stack`: the web and worker processes the bench starts;
- `load`: the load phase and its ledger;
- `agent`, `channel`: the agent processes that make the load, and their messages;
- `http`: the lean HTTP/1.1 and SSE client the agents use;
- `workload`, `histogram`, `baselines`, `report`, `system`: what is written, latency histograms, the baselines,
  the report and comparisons, and what is read from the operating system.
"""
