"""Build ``shop.db``, the sample SQLite datasource of the quickstart (deterministic: same file each run).

python examples/make_shop_db.py
"""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

PRODUCTS = [
    ("P-100", "Espresso beans 1kg", "coffee", 24.90),
    ("P-101", "Filter coffee 500g", "coffee", 11.50),
    ("P-200", "Green tea 100g", "tea", 7.80),
    ("P-201", "Earl grey 250g", "tea", 9.40),
    ("P-300", "Ceramic mug", "gear", 14.00),
    ("P-301", "Pour-over kettle", "gear", 59.00),
]


def build(path: Path) -> None:
    rng = random.Random(20240301)
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE products (sku TEXT PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL,
                               price NUMERIC NOT NULL);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, ordered_at TEXT NOT NULL, customer TEXT NOT NULL,
                             sku TEXT NOT NULL REFERENCES products(sku), quantity INTEGER NOT NULL,
                             status TEXT NOT NULL);
        """
    )
    con.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", PRODUCTS)
    start = datetime(2024, 1, 1)
    orders = []
    for order_id in range(1, 1501):
        when = start + timedelta(minutes=rng.randrange(0, 182 * 24 * 60))
        orders.append(
            (
                order_id,
                when.isoformat(sep=" "),
                f"customer-{rng.randrange(1, 240):03d}",
                rng.choice(PRODUCTS)[0],
                rng.choice([1, 1, 1, 2, 2, 3]),
                rng.choice(["paid"] * 9 + ["refunded"]),
            )
        )
    con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", orders)
    con.commit()
    con.execute("VACUUM")
    con.close()


if __name__ == "__main__":
    build(Path(__file__).with_name("shop.db"))
