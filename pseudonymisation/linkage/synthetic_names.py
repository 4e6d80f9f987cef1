"""Name lists for `synthetic`: a few hundred per country, the commonest first.

The first names of each list are the commonest, as a clerk writes them (written here); the
long tail comes from Faker's person providers for the country's locale (a test and bench
dependency, read at import, not copied). `synthetic` draws them with a Zipf-like skew, so a
few names are common and most are rare, as in a real population: small flat lists would
make namesakes far commoner than they are.
"""

from __future__ import annotations

import importlib
import random

# country: (male given, female given, family, places); names as a clerk would write them
COMMON = {
    "DE": (
        "Jürgen Lukas Felix Jonas Maximilian Paul Leon Elias Noah Ben Finn Jörg Moritz Tim",
        "Anna Lena Sophie Marie Emilia Hannah Lea Mia Jule Lotte Clara Greta Käthe Frieda",
        "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer "
        "Koch Bauer Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger "
        "Hofmann Hartmann Lange Schmitt Werner Krause Meier Lehmann Köhler Groß Weiß Jäger",
        "Berlin München Köln Hamburg Düsseldorf Nürnberg Leipzig",
    ),
    "FR": (
        "Léo Gabriel Raphaël Louis Jules Hugo Arthur Lucas Noé Théo Adam Maël Timothée",
        "Léa Chloé Inès Manon Camille Zoé Louise Jade Emma Alice Lina Océane Mathilde Anaïs",
        "Martin Bernard Dubois Thomas Robert Richard Petit Durand Leroy Moreau Simon Laurent "
        "Lefèvre Michel Garçon Fournier Girard Bonnet Dupont Lambert Fontaine Rousseau "
        "Vincent Müller Lefebvre Faure André Mercier Blanc Guérin Boyer Chevalier François",
        "Paris Lyon Marseille Toulouse Nantes Lille Besançon",
    ),
    "ES": (
        "Hugo Martín Lucas Mateo Leo Daniel Alejandro Pablo Álvaro Adrián Iván Íñigo José",
        "Lucía Sofía Martina María Julia Paula Valeria Emma Daniela Carla Alba Noa Inés Ángela",
        "García Rodríguez González Fernández López Martínez Sánchez Pérez Gómez Martín "
        "Jiménez Ruiz Hernández Díaz Moreno Muñoz Álvarez Romero Alonso Gutiérrez Navarro "
        "Torres Domínguez Vázquez Ramos Gil Ramírez Serrano Blanco Molina Ibáñez Castillo",
        "Madrid Barcelona Valencia Sevilla Zaragoza Málaga Logroño",
    ),
    "IT": (
        "Leonardo Francesco Alessandro Lorenzo Mattia Andrea Gabriele Riccardo Niccolò Tommaso",
        "Sofia Giulia Aurora Alice Ginevra Emma Giorgia Greta Beatrice Anna Chiara Martina",
        "Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Bruno Gallo "
        "Conti De_Luca Mancini Costa Giordano Rizzo Lombardi Moretti Barbieri Fontana "
        "Santoro Mariani Rinaldi Caruso Ferrara Galli Martini Leone Longo Gentile Martinelli",
        "Roma Milano Napoli Torino Palermo Genova Forlì",
    ),
    "PL": (
        "Antoni Jan Jakub Aleksander Franciszek Szymon Filip Mikołaj Wojciech Łukasz Stanisław",
        "Zuzanna Julia Zofia Hanna Maja Lena Alicja Oliwia Małgorzata Łucja Agnieszka Wiktoria",
        "Nowak Kowalski Wiśniewski Wójcik Kowalczyk Kamiński Lewandowski Zieliński "
        "Szymański Woźniak Dąbrowski Kozłowski Jankowski Mazur Kwiatkowski Krawczyk "
        "Piotrowski Grabowski Nowakowski Pawłowski Michalski Król Wieczorek Jabłoński",
        "Warszawa Kraków Łódź Wrocław Poznań Gdańsk",
    ),
    "NL": (
        "Daan Sem Lucas Levi Finn Milan Bram Luuk Jesse Thijs Ruben Sven Gijs Joël",
        "Emma Julia Mila Tess Sophie Zoë Sara Nora Yara Eva Lotte Fenna Anouk Noor",
        "De_Jong Jansen De_Vries Van_den_Berg Van_Dijk Bakker Janssen Visser Smit Meijer "
        "De_Boer Mulder De_Groot Bos Vos Peters Hendriks Van_Leeuwen Dekker Brouwer De_Wit "
        "Dijkstra Smits De_Graaf Van_der_Meer Van_der_Linden Kok Jacobs De_Haan Vermeulen",
        "Amsterdam Rotterdam Utrecht Eindhoven Groningen Tilburg",
    ),
    "UK": (
        "Oliver George Harry Noah Jack Leo Arthur Muhammad Oscar Charlie Jacob Thomas Freddie",
        "Olivia Amelia Isla Ava Mia Ivy Lily Isabella Rosie Sophia Grace Freya Evie Poppy",
        "Smith Jones Williams Taylor Brown Davies Evans Wilson Thomas Johnson Roberts "
        "Robinson Thompson Wright Walker White Edwards Hughes Green Hall Lewis Harris Clarke "
        "Patel Jackson Wood Turner Martin Cooper Hill Ward Morris Moore O'Brien O'Connor",
        "London Manchester Birmingham Leeds Glasgow Bristol",
    ),
    "SE": (
        "William Liam Noah Hugo Lucas Oliver Elias Adam Alexander Nils Björn Måns Sören",
        "Alice Maja Elsa Astrid Wilma Freja Olivia Selma Ebba Alma Saga Märta Åsa Linnéa",
        "Andersson Johansson Karlsson Nilsson Eriksson Larsson Olsson Persson Svensson "
        "Gustafsson Pettersson Jonsson Jansson Hansson Bengtsson Jönsson Lindberg Jakobsson "
        "Magnusson Lindström Olofsson Lindqvist Lindgren Berg Axelsson Bergström Lundberg",
        "Stockholm Göteborg Malmö Uppsala Västerås Örebro",
    ),
    "CZ": (
        "Jakub Jan Tomáš Adam Matyáš Vojtěch Ondřej Filip Lukáš David Šimon Jiří Václav",
        "Eliška Tereza Anna Adéla Natálie Sofie Karolína Kristýna Viktorie Barbora Zuzana",
        "Novák Svoboda Novotný Dvořák Černý Procházka Kučera Veselý Horák Němec Pokorný "
        "Marek Pospíšil Hájek Jelínek Král Růžička Beneš Fiala Sedláček Doležal Zeman "
        "Kolář Navrátil Čermák Vaněk Urban Blažek Kříž Kovář",
        "Praha Brno Ostrava Plzeň Liberec Olomouc České_Budějovice",
    ),
}

LOCALES = {
    "DE": "de_DE",
    "FR": "fr_FR",
    "ES": "es_ES",
    "IT": "it_IT",
    "PL": "pl_PL",
    "NL": "nl_NL",
    "UK": "en_GB",
    "SE": "sv_SE",
    "CZ": "cs_CZ",
}
SIZES = (120, 120, 300)  # male given, female given, family names per country at most
# Faker's attribute for family names where it is not `last_names` (the male form; the
# generator derives nothing from grammatical gender)
FAMILY_ATTRIBUTE = {"PL": "male_last_names", "CZ": "last_names_male"}


def _names(values: object) -> list[str]:
    """A provider's names, the most frequent first when it gives frequencies."""
    if isinstance(values, dict):
        return [k for k, _ in sorted(values.items(), key=lambda kv: -kv[1])]
    return list(values)  # type: ignore[call-overload]


def _lists(country: str) -> tuple[str, str, str, str]:
    provider = importlib.import_module(f"faker.providers.person.{LOCALES[country]}").Provider
    family = FAMILY_ATTRIBUTE.get(country, "last_names")
    common = COMMON[country]
    out = []
    for head, attribute, size in zip(
        common[:3], ("first_names_male", "first_names_female", family), SIZES, strict=True
    ):
        values = getattr(provider, attribute)
        seen = head.split()
        extra = [n.strip().replace(" ", "_") for n in _names(values) if n.strip() and "." not in n]
        tail = [
            n for n in dict.fromkeys(extra) if n not in seen and n.replace("_", " ") not in seen
        ]
        if not isinstance(values, dict):  # no frequencies given: no order to keep
            random.Random(country).shuffle(tail)  # noqa: S311 (test data, seeded)
        out.append(" ".join(seen + tail[: size - len(seen)]))
    return out[0], out[1], out[2], common[3]


NAMES = {country: _lists(country) for country in COMMON}
