"""Write the prompt CSVs (``prompt,classname,classidx``) the classifier conditions on.

    python -m bigain.make_prompts                      # every built-in dataset -> bigain/data/prompts/
    python -m bigain.make_prompts --datasets pets food # a few
    python -m bigain.make_prompts --from_dataset_root  # class names read from the datasets' own metadata
    python -m bigain.make_prompts --folder /data/mine --template "a photo of a {}."   # -> /data/mine/prompts.csv

`classidx` is the label the dataset loader returns (ImageNet-100 uses ImageNet-1k ids, so a
class-conditional ImageNet model can be conditioned on it directly). Templates follow
docs/protocol.md §4.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path
from typing import Sequence

from bigain.cli import check_output_dir, run_cli
from bigain.data import IMAGENET100_IDS, PROMPTS_DIR, build_dataset
from bigain.storage import atomic_write_text
from bigain.testbed.textures import CLASS_NAMES as TEXTURE_NAMES

__all__ = ["TEMPLATES", "CLASSNAMES", "IMAGENET100_IDS", "class_table", "write_csv", "main"]

TEMPLATES: dict[str, str] = {
    "imagenet": "a photo of a {}.",
    "imagenet100": "a photo of a {}.",
    "stl10": "a photo of a {}.",
    "coco2017": "a photo of a {}.",
    "pets": "a photo of a {}, a type of pet.",
    "flowers": "a photo of a {}, a type of flower.",
    "aircraft": "a photo of a {}, a type of aircraft.",
    "food": "a photo of {}, a type of food.",
    "cifar10": "a blurry photo of a {}.",
    "mnist": 'a photo of the number: "{}".',
    "fmnist": "a photo of a {}.",
    "textures": "a photo of {}.",
}

# torchvision label order (OxfordIIITPet: alphabetical breed names from the annotation list)
_PETS = [
    "Abyssinian", "American Bulldog", "American Pit Bull Terrier", "Basset Hound", "Beagle", "Bengal", "Birman",
    "Bombay", "Boxer", "British Shorthair", "Chihuahua", "Egyptian Mau", "English Cocker Spaniel", "English Setter",
    "German Shorthaired", "Great Pyrenees", "Havanese", "Japanese Chin", "Keeshond", "Leonberger", "Maine Coon",
    "Miniature Pinscher", "Newfoundland", "Persian", "Pomeranian", "Pug", "Ragdoll", "Russian Blue",
    "Saint Bernard", "Samoyed", "Scottish Terrier", "Shiba Inu", "Siamese", "Sphynx", "Staffordshire Bull Terrier",
    "Wheaten Terrier", "Yorkshire Terrier",
]
# Oxford Flowers-102 label order (1..102 -> 0..101)
_FLOWERS = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold", "tiger lily",
    "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot", "king protea",
    "spear thistle", "yellow iris", "globe flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
    "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william", "carnation",
    "garden phlox", "love in the mist", "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink-yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush",
    "californian poppy", "osteospermum", "spring crocus", "bearded iris", "windflower", "tree poppy", "gazania",
    "azalea", "water lily", "rose", "thorn apple", "morning glory", "passion flower", "lotus", "toad lily",
    "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "air plant", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily",
]
# Food-101 (torchvision sorts the meta keys, ASCII order)
_FOOD = sorted([
    "apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad", "beignets",
    "bibimbap", "bread_pudding", "breakfast_burrito", "bruschetta", "caesar_salad", "cannoli", "caprese_salad",
    "carrot_cake", "ceviche", "cheese_plate", "cheesecake", "chicken_curry", "chicken_quesadilla", "chicken_wings",
    "chocolate_cake", "chocolate_mousse", "churros", "clam_chowder", "club_sandwich", "crab_cakes", "creme_brulee",
    "croque_madame", "cup_cakes", "deviled_eggs", "donuts", "dumplings", "edamame", "eggs_benedict", "escargots",
    "falafel", "filet_mignon", "fish_and_chips", "foie_gras", "french_fries", "french_onion_soup", "french_toast",
    "fried_calamari", "fried_rice", "frozen_yogurt", "garlic_bread", "gnocchi", "greek_salad",
    "grilled_cheese_sandwich", "grilled_salmon", "guacamole", "gyoza", "hamburger", "hot_and_sour_soup", "hot_dog",
    "huevos_rancheros", "hummus", "ice_cream", "lasagna", "lobster_bisque", "lobster_roll_sandwich",
    "macaroni_and_cheese", "macarons", "miso_soup", "mussels", "nachos", "omelette", "onion_rings", "oysters",
    "pad_thai", "paella", "pancakes", "panna_cotta", "peking_duck", "pho", "pizza", "pork_chop", "poutine",
    "prime_rib", "pulled_pork_sandwich", "ramen", "ravioli", "red_velvet_cake", "risotto", "samosa", "sashimi",
    "scallops", "seaweed_salad", "shrimp_and_grits", "spaghetti_bolognese", "spaghetti_carbonara", "spring_rolls",
    "steak", "strawberry_shortcake", "sushi", "tacos", "takoyaki", "tiramisu", "tuna_tartare", "waffles",
])
# FGVC-Aircraft variants (variants.txt order)
_AIRCRAFT = [
    "707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600", "737-700", "737-800", "737-900",
    "747-100", "747-200", "747-300", "747-400", "757-200", "757-300", "767-200", "767-300", "767-400", "777-200",
    "777-300", "A300B4", "A310", "A318", "A319", "A320", "A321", "A330-200", "A330-300", "A340-200", "A340-300",
    "A340-500", "A340-600", "A380", "ATR-42", "ATR-72", "An-12", "BAE 146-200", "BAE 146-300", "BAE-125",
    "Beechcraft 1900", "Boeing 717", "C-130", "C-47", "CRJ-200", "CRJ-700", "CRJ-900", "Cessna 172", "Cessna 208",
    "Cessna 525", "Cessna 560", "Challenger 600", "DC-10", "DC-3", "DC-6", "DC-8", "DC-9-30", "DH-82", "DHC-1",
    "DHC-6", "DHC-8-100", "DHC-8-300", "DR-400", "Dornier 328", "E-170", "E-190", "E-195", "EMB-120", "ERJ 135",
    "ERJ 145", "Embraer Legacy 600", "Eurofighter Typhoon", "F-16A/B", "F/A-18", "Falcon 2000", "Falcon 900",
    "Fokker 100", "Fokker 50", "Fokker 70", "Global Express", "Gulfstream IV", "Gulfstream V", "Hawk T1", "Il-76",
    "L-1011", "MD-11", "MD-80", "MD-87", "MD-90", "Metroliner", "Model B200", "PA-28", "SR-20", "Saab 2000",
    "Saab 340", "Spitfire", "Tornado", "Tu-134", "Tu-154", "Yak-42",
]
# COCO-2017 object categories in category-id order (ids 1..90 with gaps -> 0..79)
_COCO = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]

CLASSNAMES: dict[str, list[str]] = {
    "pets": _PETS,
    "flowers": _FLOWERS,
    "food": [n.replace("_", " ") for n in _FOOD],
    "aircraft": _AIRCRAFT,
    "coco2017": _COCO,
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "stl10": ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"],
    "mnist": [str(i) for i in range(10)],
    "fmnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"],
    "textures": list(TEXTURE_NAMES),
}
EXPECTED_COUNTS = {"imagenet": 1000, "imagenet100": 100, "pets": 37, "flowers": 102, "food": 101, "aircraft": 100,
                   "coco2017": 80, "cifar10": 10, "stl10": 10, "mnist": 10, "fmnist": 10,
                   "textures": 10}


def imagenet_names(source: str = "openai") -> list[str]:
    """The 1,000 ImageNet class names: 'openai' = CLIP's disambiguated names (open_clip), or 'torchvision'."""
    if source == "openai":
        try:
            from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
        except ImportError as err:
            raise ImportError("imagenet_names('openai') needs open_clip_torch; "
                              "use --imagenet_names torchvision") from err
        return list(IMAGENET_CLASSNAMES)
    if source == "torchvision":
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)
    raise ValueError(f"unknown ImageNet name source {source!r}; allowed: openai, torchvision")


def class_table(dataset: str, imagenet_source: str = "openai") -> list[tuple[str, str, int]]:
    """(prompt, classname, classidx) rows of a built-in dataset, sorted by classidx."""
    if dataset not in TEMPLATES:
        raise ValueError(f"no built-in class names for {dataset!r}; allowed: {', '.join(TEMPLATES)}")
    template = TEMPLATES[dataset]
    if dataset == "imagenet":
        pairs = list(enumerate(imagenet_names(imagenet_source)))
    elif dataset == "imagenet100":
        names = imagenet_names(imagenet_source)
        pairs = [(i, names[i]) for i in IMAGENET100_IDS]
    else:
        pairs = list(enumerate(CLASSNAMES[dataset]))
    if len(pairs) != EXPECTED_COUNTS[dataset]:
        raise AssertionError(f"{dataset}: {len(pairs)} classes, expected {EXPECTED_COUNTS[dataset]}")
    return [(template.format(name), name, idx) for idx, name in pairs]


def table_from_names(names: Sequence[str], template: str,
                     ids: Sequence[int] | None = None) -> list[tuple[str, str, int]]:
    """Rows for arbitrary class names (e.g. a dataset's own `.classes`)."""
    ids = list(range(len(names))) if ids is None else list(ids)
    return [(template.format(n), n, i) for n, i in zip(names, ids)]


def write_csv(rows: Sequence[tuple[str, str, int]], path: str | Path) -> Path:
    """Write rows atomically as prompt,classname,classidx."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["prompt", "classname", "classidx"])
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())


def names_from_dataset_root(dataset: str, root: str) -> list[str]:
    """Class names as the dataset's own metadata gives them (torchvision `.classes` / COCO categories)."""
    ds = build_dataset(dataset, root=root, names_from_metadata=True)
    return list(ds.metadata_classnames)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(TEMPLATES), choices=list(TEMPLATES),
                   help="built-in datasets to write (default: all)")
    p.add_argument("--output_dir", "--out_dir", "--out", dest="out_dir", default=str(PROMPTS_DIR),
                   help="where <dataset>_prompts.csv go")
    p.add_argument("--imagenet_names", default="openai", choices=["openai", "torchvision"],
                   help="ImageNet name list: CLIP's disambiguated names (open_clip) or torchvision's")
    p.add_argument("--from_dataset_root", action="store_true",
                   help="take class names from the datasets under $DATASET_ROOT instead of the built-in lists")
    p.add_argument("--dataset_root", default=os.environ.get("DATASET_ROOT"), help="default: $DATASET_ROOT")
    p.add_argument("--folder", help="write <folder>/prompts.csv for a class-per-sub-folder dataset and exit")
    p.add_argument("--template", default="a photo of a {}.", help="template for --folder ({} = class name)")
    args = p.parse_args(argv)
    check_output_dir(args.folder or args.out_dir, "--folder" if args.folder else "--out_dir")
    if args.folder:
        folder = Path(args.folder)
        names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise ValueError(f"{folder} has no class sub-folders")
        out = write_csv(table_from_names([n.replace("_", " ") for n in names], args.template), folder / "prompts.csv")
        print(f"wrote {out} ({len(names)} classes)")
        return
    for name in args.datasets:
        if args.from_dataset_root and name not in ("imagenet", "imagenet100", "fmnist", "textures"):
            if not args.dataset_root:
                raise ValueError("--from_dataset_root needs --dataset_root or $DATASET_ROOT")
            rows = table_from_names(names_from_dataset_root(name, args.dataset_root), TEMPLATES[name])
        else:
            rows = class_table(name, args.imagenet_names)
        out = write_csv(rows, Path(args.out_dir) / f"{name}_prompts.csv")
        print(f"wrote {out} ({len(rows)} classes)")


if __name__ == "__main__":
    run_cli(main)
