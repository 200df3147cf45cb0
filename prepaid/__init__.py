"""prepaid: exact prepaid balances debited from interval data, credit rules, top-ups, notices.

Pure core: money, tariffs, localtime, pricing, billing, ledger, credit, topups.
Shell: posting (the only writer of balances), engine, daily, notices, operations, kpis,
service. See docs/prepaid.md.
"""
