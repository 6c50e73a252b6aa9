"""peftbench: benchmark parameter-efficient fine-tuning methods on decoder LLMs (PEFT-Bench + PSCP)."""

__version__ = "0.1.0"
