"""What a method costs: parameters, FLOPs, training memory, latency. See docs/costs.md for the protocol.

`measure_run_costs` is the one entry a run uses; `cost_from_config` costs methods on a model built
from its configuration alone (no weights); the modules hold one measure each.
"""

from peftbench.costs.flops import GB, count_parameters, forward_flops
from peftbench.costs.memory import peak_memory

__all__ = ["GB", "count_parameters", "forward_flops", "peak_memory"]
