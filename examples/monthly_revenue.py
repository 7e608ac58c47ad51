"""Monthly revenue: orders from the `shop` datasource, aggregated in DuckDB.

analysis run examples/monthly_revenue.py --datasources examples/datasources.toml -p month=2024-03
"""


def run(ctx, parameters):
    month = parameters.get("month", "2024-03")  # YYYY-MM
    orders = ctx.query_datasource(
        "shop",
        "SELECT o.id, o.ordered_at, o.quantity, o.status, p.category, p.price "
        "FROM orders o JOIN products p USING (sku) WHERE substr(o.ordered_at, 1, 7) = ?",
        [month],
    )
    ctx.load_data("orders", orders)
    by_category = ctx.query(
        """
        SELECT category,
               count(*)                                   AS orders,
               sum(quantity)                              AS units,
               round(sum(quantity * price), 2)            AS revenue
        FROM orders
        WHERE status = 'paid'
        GROUP BY category
        ORDER BY revenue DESC
        """
    )
    total = sum(row["revenue"] for row in by_category)
    ctx.log(f"{len(orders)} orders in {month}, revenue {total:.2f}")
    return {"month": month, "revenue": round(total, 2), "by_category": by_category}
