"""What a method costs: parameters, FLOPs, training memory, latency. See docs/costs.md for the protocol.

`measure_method_costs` measures what a method costs on a model (once per grid: the runner caches it)
and `run_costs` adds what belongs to one run; `cost_from_config` costs methods on a model built
from its configuration alone (no weights); the modules hold one measure each.
"""

from peftbench.costs.flops import GB, count_parameters, forward_flops
from peftbench.costs.memory import peak_memory

__all__ = ["GB", "count_parameters", "forward_flops", "peak_memory"]
