"""An honest analysis, as a notebook source for the tests: a summary table and a Kaplan-Meier curve."""

PARAMETERS = """min_age = 18
data_path = "data.parquet"
output_dir = "."
"""

SUMMARY = """import os
import workbench_job
df = workbench_job.load(data_path)
adults = df[df["age"] >= min_age]
summary = (adults.groupby(["sex", "diagnosis"], observed=True)
           .agg(n=("age", "size"), mean_cost=("cost", "mean")).reset_index())
summary = summary[summary["n"] >= 10]
summary.to_csv(os.path.join(output_dir, "summary.csv"), index=False)
print(f"{len(summary)} groups")
"""

KAPLAN_MEIER = """import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
fig, ax = plt.subplots(figsize=(5, 3))
for sex, group in adults.groupby("sex", observed=True):
    times = np.sort(group["visits"].unique())
    at_risk = np.array([(group["visits"] >= t).sum() for t in times])
    events = np.array([((group["visits"] == t) & group["readmitted"]).sum() for t in times])
    survival = np.cumprod(1 - events / at_risk)
    ax.step(times, survival, where="post", label=str(sex))
ax.set_xlabel("visits"); ax.set_ylabel("not readmitted"); ax.legend()
fig.savefig(os.path.join(output_dir, "km_curve.png"), dpi=60)
"""


def notebook_text(*cells: str, parameters: str = PARAMETERS) -> str:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    return nbformat.writes(nb)


def write_notebook(path, *cells: str, parameters: str = PARAMETERS):
    path.write_text(notebook_text(*cells, parameters=parameters))
    return path


def honest(path):
    return write_notebook(path, SUMMARY, KAPLAN_MEIER)
