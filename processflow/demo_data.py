"""What the demo's pipeline runs are about: questions with their SQL, users,
models with their prices, and the errors a SQL execution meets. The first
question is the original system's sample session."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    query: str
    intent: str
    domain: str
    template: str
    tables: tuple[str, ...]
    sql: str
    generators: tuple[str, ...]


SAMPLE = Question(
    query="Show me total sales by region for last quarter",
    intent="aggregation",
    domain="sales",
    template="sales_aggregation",
    tables=("Sales", "Regions"),
    sql="SELECT r.RegionName, SUM(s.Amount) AS TotalSales FROM Sales s "
    "JOIN Regions r ON s.RegionId = r.Id "
    "WHERE s.SaleDate >= DATEADD(quarter, -1, GETDATE()) GROUP BY r.RegionName",
    generators=("join-generation", "date-filter-generation", "aggregation-generation"),
)
SAMPLE_USER = "john.doe@company.com"

QUESTIONS = (
    SAMPLE,
    Question(
        "Top 10 customers by revenue this year",
        "ranking",
        "sales",
        "top_n_ranking",
        ("Customers", "Orders"),
        "SELECT TOP 10 c.Name, SUM(o.Total) AS Revenue FROM Customers c "
        "JOIN Orders o ON o.CustomerId = c.Id WHERE YEAR(o.OrderDate) = "
        "YEAR(GETDATE()) GROUP BY c.Name ORDER BY Revenue DESC",
        ("join-generation", "date-filter-generation", "aggregation-generation"),
    ),
    Question(
        "How many open support tickets per priority?",
        "aggregation",
        "support",
        "count_by_category",
        ("Tickets",),
        "SELECT Priority, COUNT(*) AS OpenTickets FROM Tickets "
        "WHERE Status = 'Open' GROUP BY Priority",
        ("aggregation-generation",),
    ),
    Question(
        "List employees hired in the last 30 days",
        "listing",
        "hr",
        "recent_records",
        ("Employees", "Departments"),
        "SELECT e.FullName, d.Name AS Department, e.HireDate FROM Employees e "
        "JOIN Departments d ON e.DepartmentId = d.Id "
        "WHERE e.HireDate >= DATEADD(day, -30, GETDATE())",
        ("join-generation", "date-filter-generation"),
    ),
    Question(
        "Average order value by month for 2024",
        "trend",
        "sales",
        "time_series",
        ("Orders",),
        "SELECT FORMAT(OrderDate, 'yyyy-MM') AS Month, AVG(Total) AS AvgOrder "
        "FROM Orders WHERE YEAR(OrderDate) = 2024 "
        "GROUP BY FORMAT(OrderDate, 'yyyy-MM') ORDER BY Month",
        ("date-filter-generation", "aggregation-generation"),
    ),
    Question(
        "Which products are below reorder level?",
        "filtering",
        "inventory",
        "threshold_filter",
        ("Products", "Inventory"),
        "SELECT p.Name, i.QuantityOnHand, p.ReorderLevel FROM Products p "
        "JOIN Inventory i ON i.ProductId = p.Id "
        "WHERE i.QuantityOnHand < p.ReorderLevel",
        ("join-generation",),
    ),
    Question(
        "Compare marketing spend and leads per channel last month",
        "comparison",
        "marketing",
        "multi_metric_comparison",
        ("Campaigns", "Leads", "Channels"),
        "SELECT ch.Name, SUM(c.Spend) AS Spend, COUNT(l.Id) AS Leads FROM Channels ch "
        "JOIN Campaigns c ON c.ChannelId = ch.Id "
        "LEFT JOIN Leads l ON l.CampaignId = c.Id "
        "WHERE c.StartDate >= DATEADD(month, -1, GETDATE()) GROUP BY ch.Name",
        ("join-generation", "date-filter-generation", "aggregation-generation"),
    ),
)

USERS = (
    SAMPLE_USER,
    "maria.garcia@company.com",
    "li.wei@company.com",
    "priya.patel@company.com",
    "ahmed.hassan@company.com",
    "sofia.rossi@company.com",
)

# provider, model, dollars per 1,000 input tokens, per 1,000 output tokens
MODELS = (
    ("openai", "gpt-4", 0.03, 0.06),
    ("openai", "gpt-4o", 0.005, 0.015),
    ("openai", "gpt-4o-mini", 0.00015, 0.0006),
    ("anthropic", "claude-3-5-sonnet", 0.003, 0.015),
    ("azure-openai", "gpt-4-turbo", 0.01, 0.03),
)

SQL_ERRORS = (
    "Timeout expired. The timeout period elapsed prior to completion of the operation.",
    "Invalid column name 'Amount'.",
    "Invalid object name 'dbo.SalesArchive'.",
    "Conversion failed when converting date and/or time from character string.",
)
