"""Deterministic demo data: patients of three hospitals, and the open Iris table.

The patient tables are synthetic people generated from a fixed seed (the same
bytes on every machine); the Iris table is the real public dataset shipped
inside scikit-learn (CC BY 4.0, UCI Machine Learning Repository), so nothing
is downloaded at run time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

HOSPITALS = {"hospital_a": (20_000, 11), "hospital_b": (15_000, 22), "hospital_c": (10_000, 33)}
DIAGNOSES = ["healthy", "diabetes", "hypertension", "heart_disease", "asthma"]
REGIONS = ["north", "south", "east", "west"]

PATIENT_COLUMNS = {
    "patient_id": {"type": "id", "description": "pseudonymous patient identifier"},
    "age": {"type": "int", "bounds": [0, 100], "description": "age in years"},
    "sex": {"type": "category", "categories": ["F", "M"], "description": "recorded sex"},
    "bmi": {"type": "float", "bounds": [10.0, 60.0], "description": "body-mass index"},
    "smoker": {"type": "bool", "description": "current smoker"},
    "diagnosis": {"type": "category", "categories": DIAGNOSES, "description": "main diagnosis"},
    "visits": {"type": "int", "bounds": [0, 50], "description": "visits in the last year"},
    "cost": {"type": "float", "bounds": [0.0, 50_000.0], "description": "treatment cost in EUR, last year"},
    "readmitted": {"type": "bool", "description": "readmitted within 30 days"},
    "region": {"type": "category", "categories": REGIONS, "description": "home region"},
}

IRIS_COLUMNS = {
    "sepal_length": {"type": "float", "bounds": [4.0, 8.0], "description": "cm"},
    "sepal_width": {"type": "float", "bounds": [2.0, 4.5], "description": "cm"},
    "petal_length": {"type": "float", "bounds": [1.0, 7.0], "description": "cm"},
    "petal_width": {"type": "float", "bounds": [0.1, 2.5], "description": "cm"},
    "species": {"type": "category", "categories": ["setosa", "versicolor", "virginica"], "description": ""},
}


def patients(rows: int, seed: int, id_prefix: str = "P") -> pl.DataFrame:
    """Synthetic patients with plausible correlations (age → diagnosis, cost, readmission)."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(52, 18, rows), 0, 100).round().astype(np.int64)
    sex = rng.choice(["F", "M"], rows)
    smoker = rng.random(rows) < np.where(age < 30, 0.25, 0.18)
    bmi = np.clip(rng.normal(26 + 0.04 * (age - 50), 4.5, rows), 14, 55).round(1)
    risk = -3.2 + 0.045 * age + 0.08 * (bmi - 25) + 0.6 * smoker
    p_sick = 1 / (1 + np.exp(-risk))
    sick = rng.random(rows) < p_sick
    sick_kind = rng.choice(DIAGNOSES[1:], rows, p=[0.35, 0.35, 0.18, 0.12])
    diagnosis = np.where(sick, sick_kind, "healthy")
    visits = np.clip(rng.poisson(1.5 + 4.0 * sick + 0.02 * age), 0, 50).astype(np.int64)
    cost = np.clip(rng.gamma(2.0, 400 + 1800 * sick + 30 * age) + 250 * visits, 0, 50_000).round(2)
    readmit_logit = -3.0 + 0.02 * age + 0.9 * sick + 0.08 * visits + 0.4 * smoker
    readmitted = rng.random(rows) < 1 / (1 + np.exp(-readmit_logit))
    region = rng.choice(REGIONS, rows, p=[0.3, 0.3, 0.2, 0.2])
    return pl.DataFrame({
        "patient_id": [f"{id_prefix}{i:07d}" for i in range(rows)],
        "age": age, "sex": sex, "bmi": bmi, "smoker": smoker, "diagnosis": diagnosis, "visits": visits,
        "cost": cost, "readmitted": readmitted, "region": region,
    })


def iris() -> pl.DataFrame:
    """The Iris table shipped with scikit-learn."""
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.frame.rename(columns={"sepal length (cm)": "sepal_length", "sepal width (cm)": "sepal_width",
                                        "petal length (cm)": "petal_length", "petal width (cm)": "petal_width"})
    frame["species"] = [bunch.target_names[t] for t in frame.pop("target")]
    return pl.from_pandas(frame)


def write_demo_data(folder: Path) -> dict[str, Path]:
    """Write every demo table as Parquet under ``folder`` (skips files already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (rows, seed) in HOSPITALS.items():
        path = folder / f"patients_{name}.parquet"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            patients(rows, seed, id_prefix=name[-1].upper()).write_parquet(tmp)
            tmp.replace(path)
        out[name] = path
    path = folder / "iris.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        iris().write_parquet(tmp)
        tmp.replace(path)
    out["iris"] = path
    return out
