"""The step catalog (LEGACY.md §1): code, display name, order and parent.

A client may send only a code; name, order and parent then come from here.
Unknown codes are allowed and keep what the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogStep:
    code: str
    name: str
    order: int
    parent: str | None = None


CATALOG: dict[str, CatalogStep] = {
    step.code: step
    for step in (
        CatalogStep("auth", "Authentication & Authorization", 1),
        CatalogStep("request-validation", "Request Validation", 2),
        CatalogStep("semantic-analysis", "Semantic Analysis", 3),
        CatalogStep("intent-detection", "Intent Detection", 3, "semantic-analysis"),
        CatalogStep("entity-extraction", "Entity Extraction", 3, "semantic-analysis"),
        CatalogStep("schema-retrieval", "Schema Retrieval", 4),
        CatalogStep(
            "relationship-discovery", "Relationship Discovery", 4, "schema-retrieval"
        ),
        CatalogStep("join-generation", "JOIN Generation", 5),
        CatalogStep("date-filter-generation", "Date Filter Generation", 5),
        CatalogStep("aggregation-generation", "Aggregation Generation", 5),
        CatalogStep("prompt-building", "Prompt Construction", 6),
        CatalogStep("context-gathering", "Context Gathering", 6, "prompt-building"),
        CatalogStep("prompt-assembly", "Prompt Assembly", 6, "prompt-building"),
        CatalogStep("ai-generation", "AI SQL Generation", 6),
        CatalogStep("openai-request", "OpenAI API Call", 6, "ai-generation"),
        CatalogStep("response-parsing", "Response Parsing", 6, "ai-generation"),
        CatalogStep("sql-validation", "SQL Validation", 7),
        CatalogStep("sql-execution", "SQL Execution", 8),
        CatalogStep("query-execution", "Query Execution", 8, "sql-execution"),
        CatalogStep("result-processing", "Result Processing", 8, "sql-execution"),
        CatalogStep("response-assembly", "Response Assembly", 9),
    )
}

PROMPT_BUILDING = "prompt-building"
SQL_EXECUTION = "sql-execution"


def is_prompt_construction(step_type: str, parent_step_type: str) -> bool:
    """Whether a step feeds PromptConstructionSteps: ``prompt-building`` or a
    child of it, by its actual parent or, without one, by the catalog."""
    if step_type == PROMPT_BUILDING or parent_step_type == PROMPT_BUILDING:
        return True
    entry = CATALOG.get(step_type)
    return (
        not parent_step_type and entry is not None and entry.parent == PROMPT_BUILDING
    )
