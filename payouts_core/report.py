"""Reading a batch report (SPEC §4) the same way everywhere: logs, the aggregate task, the CLI."""


def summary_line(report: dict) -> str:
    """`Processed: 2 | Paid: 2 | Failed: 0 | Duplicates: 0`"""
    return (f"Processed: {report.get('processed', 0)} | Paid: {report.get('successful', 0)} | "
            f"Failed: {report.get('failed', 0)} | Duplicates: {report.get('duplicates', 0)}")
