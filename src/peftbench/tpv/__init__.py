"""Task Prompt Vectors (Belanec et al., ECML PKDD 2025): origins, soft-prompt arithmetic and the
studies of the paper, run as ordinary runs of a grid (docs/tpv.md).

`vectors` is the pure arithmetic (imported by the prompt-tuning method), `runs` keeps a run's task
prompt vector, `study` plans and executes the `tpv:` section of a config, `report` renders it.
"""
