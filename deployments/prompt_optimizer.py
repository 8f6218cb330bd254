"""PromptOptimizer deployment: title + description in any language -> English image prompt."""

from __future__ import annotations

from ray import serve

from core.metrics import prompt_fallbacks, reason_category
from core.types import OptimizedPrompt
from deployments.configs import PromptOptimizerConfig
from deployments.prompt_writer import PromptWriter


@serve.deployment(
    max_ongoing_requests=32,  # I/O bound: many chat calls can wait at once
    ray_actor_options={"num_cpus": 0.1},
)
class PromptOptimizer:
    """Writes text-to-image prompts with an OpenAI chat model, or a template when it can't."""

    def __init__(self, config: PromptOptimizerConfig):
        self._writer = PromptWriter(config)

    async def optimize(self, title: str, description: str = "") -> OptimizedPrompt:
        """A concise English prompt; `source` says whether OpenAI or the template wrote it."""
        result = await self._writer.optimize(title, description)
        if result.source == "fallback":
            prompt_fallbacks().inc(1, tags={"reason": reason_category(result.fallback_reason)})
        return result
