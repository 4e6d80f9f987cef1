"""Write mappings/examples/dipg-registry.xlsx, the SYNTHETIC example DIPG registry export.

    python tools/make_clinical_examples.py

An xlsx is binary, so its rows live here. Dates are Excel date cells, as a registry kept in
Excel has them, except one typed as text (the mapping's format reads it); one row is
deliberately bad (a Lansky score of 120). No row is a real patient.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from openpyxl import Workbook

OUT = Path(__file__).resolve().parents[1] / "mappings" / "examples" / "dipg-registry.xlsx"
HEADER = [
    "patient_id",
    "family_name",
    "given_name",
    "birth_date",
    "sex",
    "diagnosis_date",
    "diagnosis_basis",
    "histology",
    "h3_k27m",
    "lansky",
    "rt_dose_gy",
    "rt_fractions",
    "rt_start_date",
    "notes",
]
NOTE = "SYNTHETIC EXAMPLE - not a real patient"
ROWS = [
    ["DIPG-101", "Moreau", "Élodie", date(2015, 6, 2), "F", date(2022, 3, 14), "biopsy",
     "DMG H3 K27M", "mutated", 80, 54, 30, date(2022, 4, 4), NOTE],
    ["DIPG-102", "Kowalczyk", "Jakub", date(2016, 11, 23), "M", date(2023, 1, 9), "radiological",
     "radiological DIPG", "not tested", 70, 39, 13, date(2023, 1, 30), NOTE],
    ["DIPG-103", "Van den Berg", "Sanne", "17/04/2017", "F", date(2023, 8, 30), "biopsy",
     "diffuse astrocytoma", "wild type", 90, 54, 30, date(2023, 9, 18),
     NOTE + " (birth date typed as text)"],
    ["DIPG-104", "Romano", "Luca", date(2014, 2, 8), "M", date(2021, 10, 5), "biopsy",
     "DMG H3 K27M", "K27M", 120, 54, 30, date(2021, 10, 25),
     "SYNTHETIC EXAMPLE - deliberately bad: Lansky 120"],
]  # fmt: skip


def main() -> None:
    book = Workbook()
    sheet = book.active
    sheet.title = "registry"
    sheet.append(HEADER)
    for row in ROWS:
        sheet.append(row)
    for cell in (*sheet["D"][1:], *sheet["F"][1:], *sheet["M"][1:]):
        if isinstance(cell.value, date):
            cell.number_format = "DD/MM/YYYY"
    book.properties.creator = "primage tools/make_clinical_examples.py (synthetic example)"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    book.save(OUT)


if __name__ == "__main__":
    main()
