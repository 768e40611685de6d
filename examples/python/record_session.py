import time

from processflow.client import Tracker

with Tracker() as pf:  # 127.0.0.1:50051 (processflow dev), or $PROCESSFLOW_TARGET

    @pf.step("sql-execution")
    def run_sql(sql: str) -> str:
        time.sleep(0.05)  # your database call
        return "5 rows"

    question = "Top 5 customers by revenue"
    with pf.session(user_id="u1", query=question, intent="ranking") as s:
        with s.step("auth"):
            pass
        with s.step("prompt-building") as b:
            with b.step("context-gathering") as c:
                c.output = "Customers(Id, Name), Orders(CustomerId, Total)"
            b.output = f"Schema: {c.output}\nQuestion: {question}"
            b.tokens_used = 42
        with s.step("ai-generation") as g:
            sql = (
                "SELECT TOP 5 c.Name, SUM(o.Total) AS Revenue FROM Customers c "
                "JOIN Orders o ON o.CustomerId = c.Id "
                "GROUP BY c.Name ORDER BY Revenue DESC"
            )
            g.llm_call(
                provider="openai",
                model="gpt-4o",
                prompt_text=b.output,
                response_text=sql,
                input_tokens=420,
                output_tokens=60,
                cost_usd=0.003,
                duration_ms=900,
            )
            g.confidence = 0.93
        run_sql(sql)  # recorded as a step, with its result as output
        s.complete(generated_sql=sql, overall_confidence=0.9)

    session = pf.get_session(s.session_id)
    print(f"recorded {session.session_id}: {len(session.steps)} top-level steps")
    print(f"see it with: processflow show {session.session_id}")
