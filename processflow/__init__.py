"""ProcessFlow: records LLM query pipeline runs and keeps legacy reports in step."""

__version__ = "0.1.0"
