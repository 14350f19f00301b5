"""The options of ``cxr-triage train | export | manifest``: argument parsers only (the
commands that run them are :mod:`cxr_triage.training.cli` and
:mod:`cxr_triage.training.manifest_cmd`).
"""

from __future__ import annotations

import argparse

from cxr_triage.config import load_config
from cxr_triage.contract.manifest import NEGATIVE_SPELLINGS, POSITIVE_SPELLINGS
from cxr_triage.training.adapters import ADAPTERS
from cxr_triage.training.train_config import ARCHITECTURES, TrainConfig

#: train options whose default comes from the [training] config section (option -> key)
CONFIG_KEYS = ("architecture", "image_size", "epochs", "batch_size", "patience", "max_minutes", "threads",
               "cache_dir")


#: the defaults of a fine-tune (``--init-from``) where the user gave none
FINETUNE = {"lr": 1e-4, "epochs": 8, "patience": 3, "head_epochs": 1}


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown for every option, unless the help text already says where it comes from."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, argparse.SUPPRESS) or action.default is False:
            return text
        return super()._get_help_string(action)


DESCRIPTIONS = {
    "manifest": "Build the manifest CSV (one row per film: file, label, patient_id, source, age, sex, view, "
                "findings, split) that train, report, evaluate and commission read. A site's own films: "
                "--dataset folder (PNG/JPEG/DICOM + a labels CSV, column names configurable) or --dataset dicom "
                "(DICOM files labelled by accession number, SOP or Study Instance UID). Public layouts: nih, "
                "chexpert, mimic, vindr, shenzhen-montgomery, jsrt, shared. Whatever is left out (missing or "
                "unreadable films, bad labels, unknown sub-folders, laterals) is reported, never skipped silently.",
    "train": "Train a normal-vs-abnormal classifier from a manifest: patient-level split (kept in "
             "<out>/split.csv), early stopping on validation AUROC, temperature/threshold calibration on "
             "validation, then the test report (<out>/test_report.json/.html). Prints the split per source at "
             "the start and one line per epoch with the time left. A stopped run continues with --resume "
             "(same --out; the recipe comes from <out>/last.pt, only --epochs, --max-minutes, --patience, "
             "--threads... may change; the summary keeps every run). Defaults marked [training] come from "
             "the config file's [training] section. A site with a few hundred films: start from the shipped "
             "model (--init-from bundled); the run ends by saying whether the site model beats it.",
    "export": "Export a checkpoint to the ONNX file the node runs (calibrated score + heatmap + metadata: "
              "name, version, preprocessing, thresholds), checked against PyTorch on real films; nothing is "
              "written when the check fails.",
    "report": "Test report of an ONNX model on a manifest's own films: per source and per view, AUROC with a "
              "95% CI and, at each operating point, sensitivity and the share of normals called likely "
              "normal; --compare MODEL adds a paired comparison. Terminal summary, JSON and HTML.",
}


def train_args(p: argparse.ArgumentParser) -> None:
    """The options of ``cxr-triage train`` (defaults marked [training] from the embedded config)."""
    d = TrainConfig(manifest="", out="")
    try:
        section = load_config(None, environ={}).training.as_dict()  # the embedded defaults, for the help
    except Exception:  # noqa: BLE001 - the help must not fail on a config problem
        section = {}

    def cfg_default(key: str) -> str:
        return f"(default: [training] {key}, {section.get(key, getattr(d, key))!r})"

    p.add_argument("--manifest", help="manifest CSV from `cxr-triage manifest` (file,label[,patient_id,source,"
                   "...]); optional with --resume")
    p.add_argument("--out", required=True, help="run folder: split.csv, metrics, checkpoints, model.pt, reports")
    p.add_argument("--data-root", default="", help="folder the manifest's file paths are relative to "
                   "(default: the manifest's folder)")
    p.add_argument("--architecture", default=None,
                   choices=ARCHITECTURES,
                   help="network: EfficientNet-Lite0/1/2 (ImageNet weights), DenseNet-121, or a tiny CNN for "
                        "smoke runs " + cfg_default("architecture"))
    p.add_argument("--no-pretrained", action="store_true", help="start from random weights, not ImageNet's")
    g = p.add_argument_group("fine-tuning a model that works (docs/training.md, 'Fine-tuning the shipped model')")
    g.add_argument("--init-from", default="", metavar="MODEL",
                   help="start from this model instead of ImageNet: 'bundled' (the shipped model), a cxr-triage ONNX "
                        "file or a run's model.pt. Its architecture, input size, preprocessing and outputs are kept "
                        "(an ensemble is fine-tuned as one), BatchNorm statistics are frozen, and the run ends by "
                        "pairing the site model with it on the test films. Defaults become: --lr "
                        f"{FINETUNE['lr']:g}, --epochs {FINETUNE['epochs']} (none when only --max-minutes is given: "
                        f"the budget ends the run), --patience {FINETUNE['patience']}, "
                        f"--head-epochs {FINETUNE['head_epochs']} (default: none, ImageNet's weights)")
    g.add_argument("--mix-bundled", type=int, default=d.mix_bundled, metavar="N",
                   help="add N training films of the project's split (model/default_split.csv, from the "
                        "shared data: ../shared/data or $CXR_TRIAGE_DATA) to the training split only, so the model "
                        "keeps seeing what it learnt from; validation and test stay the site's films (0: none)")
    g.add_argument("--head-epochs", type=int, default=None,
                   help="the first N epochs train the output layers only, the trunk frozen (default: 0; "
                        f"{FINETUNE['head_epochs']} with --init-from)")
    p.add_argument("--image-size", type=int, default=None, help="network input side in pixels " + cfg_default("image_size"))
    p.add_argument("--harmonise-size", type=int, default=d.harmonise_size,
                   help="films are first resampled to this side (one resolution for every source)")
    p.add_argument("--epochs", type=int, default=None,
                   help="most epochs " + cfg_default("epochs") + "; no limit when only --max-minutes is given")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget of the epochs in minutes, checked after every batch: given alone, the "
                        "run trains until it is used (or patience stops it); with --epochs, whichever comes "
                        "first; 0: none " + cfg_default("max_minutes"))
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a validation AUROC gain " + cfg_default("patience"))
    p.add_argument("--batch-size", type=int, default=None, help="films per batch " + cfg_default("batch_size"))
    p.add_argument("--max-steps-per-epoch", type=int, default=d.max_steps_per_epoch,
                   help="cap on batches per epoch (0: every training film once)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (cosine schedule, half an epoch "
                   f"warm-up) (default: {d.lr:g}) ({FINETUNE['lr']:g} with --init-from)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--focal-gamma", type=float, default=d.focal_gamma,
                   help="focal loss gamma (0: class-balanced cross-entropy)")
    p.add_argument("--balance", default=d.balance, choices=["label", "source_label"],
                   help="label: both classes weigh equally; source_label: every (source, label) group does, so a "
                        "source's look cannot stand in for the label")
    p.add_argument("--augment", type=float, default=d.augment, help="augmentation strength (0: none)")
    p.add_argument("--freeze-blocks", type=int, default=None,
                   help="EfficientNet: stem + first N blocks frozen (0: train everything; default: the same stages "
                        "for each EfficientNet-Lite, 6 blocks of Lite0, 8 of Lite1/2)")
    p.add_argument("--trunk-views", type=int, default=d.trunk_views,
                   help="EfficientNet: cache the frozen trunk's output for N augmented views per film (0: off)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of patients in the validation split (films already split keep theirs)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="share of patients in the test split")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, the weights and the augmentation")
    p.add_argument("--train-sources", nargs="*", default=[], metavar="SOURCE",
                   help="train and validate on these sources only (default: all; a source holding one class "
                   "beside others is warned about: its pipeline can become the label, e.g. the shared "
                   "data's rsna-normals, model/MODEL_CARD.md round 5)")
    p.add_argument("--select-sources", nargs="*", default=[], metavar="SOURCE",
                   help="validation sources for AUROC, early stopping and calibration (default: all)")
    p.add_argument("--select-metric", default=d.select_metric,
                   choices=["auroc", "source_mean_auroc", "source_mean_auroc_nodule"],
                   help="early stopping on the validation AUROC, the mean of the per-source AUROCs, or that mean "
                        "with the nodule/mass output's AUROC")
    p.add_argument("--no-multitask", dest="multitask", action="store_false", default=d.multitask,
                   help="train one output (abnormal) only; without this flag the network learns abnormal + "
                        "nodule/mass + the 14 NIH findings as auxiliary targets, where the manifest's findings "
                        "column gives them")
    p.add_argument("--nodule-weight", type=float, default=d.nodule_weight, help="loss weight of the nodule/mass output")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight,
                   help="loss weight of the auxiliary findings (their mean)")
    p.add_argument("--distill", type=float, default=d.distill,
                   help="weight (0..1) of a teacher's soft targets from teacher_<finding> manifest columns")
    p.add_argument("--pipeline-augment", type=float, default=d.pipeline_augment,
                   help="probability scale of the random image-pipeline chain (resampling, JPEG, blur/sharpen, "
                        "gamma, noise, crops, borders) applied before preprocessing; 0: off")
    p.add_argument("--film-look", type=float, default=d.film_look,
                   help="share of the pipeline-chain draws given a digitised screen-film look first "
                        "(characteristic curve, grain, scanner blur, low resolution, 6-8 bits)")
    p.add_argument("--synthetic-lesions", type=float, default=d.synthetic_lesions,
                   help="share of a normal training film's draws given a synthetic nodule (5-30 mm) or mass "
                        "(30-60 mm) in its lung field, before the pipeline chain (needs --pipeline-augment > 0)")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="decay of the exponential moving average of the weights that is validated and exported "
                        "(e.g. 0.98; 0: the trained weights themselves)")
    p.add_argument("--backbone-lr", type=float, default=d.backbone_lr,
                   help="learning rate of the pretrained trunk as a multiple of --lr (the heads use --lr)")
    p.add_argument("--boxes-csv", default=d.boxes_csv,
                   help="file,x,y,width,height boxes of findings (files relative to the CSV): the heatmap's "
                        "lung-field prior and pointing-game check; without it the heatmap is not validated "
                        "and the worker does not show it")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads " + cfg_default("threads"))
    p.add_argument("--cache-dir", default=None, help="preprocessed-film cache " + cfg_default("cache_dir")
                   .replace("'')", "'' = <out>/cache)"))
    p.add_argument("--no-test-report", action="store_true",
                   help="skip the test report at the end (default: written to <out>/test_report.json/.html)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt: the recipe is the saved one; --epochs, "
                        "--max-minutes, --patience, --threads, --cache-dir may change; a fresh patience; "
                        "train_summary.json appends the run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the per-epoch lines stay)")
    p.add_argument("--log-json", action="store_true",
                   help="JSON log lines and library warnings on stderr, mixed with the progress (default: "
                        "appended to <out>/train_log.jsonl, only errors on stderr)")


def export_args(p: argparse.ArgumentParser) -> None:
    """The options of ``cxr-triage export``."""
    p.add_argument("--checkpoint", required=True,
                   help="model.pt written by `cxr-triage train`; best.pt or last.pt of a stopped run also "
                        "work (calibrated on the run's validation split first)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--name", help="model name recorded in the file and in every result SR (default: "
                   "cxr-triage-<architecture>-<run folder name>)")
    p.add_argument("--version", help="model version recorded in the file and the SRs (default: "
                   "<date>-<manifest sha256[:8]>-<checkpoint sha256[:6]>)")
    p.add_argument("--check-manifest", help="manifest whose validation films check the export "
                   "(default: the split.csv beside the checkpoint)")
    p.add_argument("--data-root", help="films' root for --check-manifest's paths (default: that manifest's "
                   "folder; the run's own split.csv is always read with its film paths)")
    p.add_argument("--films", nargs="*", default=[], help="real films to check on instead")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest |ONNX Runtime - PyTorch| allowed")
    p.add_argument("--max-mib", type=float, default=40.0,
                   help="largest file written, in MiB (float32 weights: a two-member Lite0 ensemble is ~26 MiB; "
                        "`make train` ships float16 copies, half the size)")


def manifest_args(p: argparse.ArgumentParser) -> None:
    """The options of ``cxr-triage manifest``."""
    p.add_argument("--dataset", choices=sorted(ADAPTERS),
                   help="folder: a folder of PNG/JPEG/DICOM films + labels CSV; dicom: DICOM files labelled by "
                        "accession number / UID; the others: public data sets in their standard layout "
                        "(required unless --combine)")
    p.add_argument("--root", help="the dataset's folder (required with --dataset)")
    p.add_argument("--combine", nargs="+", metavar="MANIFEST",
                   help="instead of importing: join these manifests into --out (every column kept, film paths "
                        "rewritten relative to --out's folder), e.g. a site's films beside the shared NIH films")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.add_argument("--paths", choices=["manifest", "root", "absolute"], default="manifest",
                   help="write film paths relative to the manifest's folder (then no --data-root is needed "
                        "later), relative to --root, or absolute")
    g = p.add_argument_group("folder and dicom datasets")
    g.add_argument("--labels", help="labels CSV (default: <root>/labels.csv)")
    g.add_argument("--file-column", default="file", help="folder: column with the film's path (relative to --root)")
    g.add_argument("--label-column", default="label", help="column with the label")
    g.add_argument("--patient-column", default="patient_id",
                   help="folder: column with the patient id (split key; default when absent: one patient per "
                        "film, or a pseudonym of the DICOM Patient ID)")
    g.add_argument("--view-column", default="view", help="folder: column with the view (PA/AP; laterals are left out)")
    g.add_argument("--age-column", default="age", help="folder: column with the age in years")
    g.add_argument("--sex-column", default="sex", help="folder: column with the sex")
    g.add_argument("--source-column", default="source", help="column with the data source, when the CSV has one")
    g.add_argument("--findings-column", default="findings", help="column with the findings ('|'-separated)")
    g.add_argument("--source", default="", help="source name of every film (default: the column, else the "
                   "--root folder's name)")
    g.add_argument("--abnormal-values", nargs="*", default=[], metavar="VALUE",
                   help=f"the site's spellings of abnormal (default: {'/'.join(POSITIVE_SPELLINGS)})")
    g.add_argument("--normal-values", nargs="*", default=[], metavar="VALUE",
                   help=f"the site's spellings of normal (default: {'/'.join(NEGATIVE_SPELLINGS)})")
    g.add_argument("--key", default="accession_number", choices=["accession_number", "sop_instance_uid",
                                                                  "study_instance_uid"],
                   help="dicom: what the labels CSV is keyed by")
    g.add_argument("--key-column", default="", help="dicom: the labels CSV's key column (default: --key)")
    g.add_argument("--min-age", type=float, default=16.0,
                   help="folder, dicom, shared: films of younger patients get split 'excluded_paediatric'")
    p.add_argument("--split", action="store_true", help="also assign a patient-level train/val/test split "
                   "(otherwise `train` does, and keeps it in <out>/split.csv)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="with --split: share of patients in val")
    p.add_argument("--test-fraction", type=float, default=0.2, help="with --split: share of patients in test")
    p.add_argument("--seed", type=int, default=0, help="with --split: seed")
    p.add_argument("--strict", action="store_true", help="exit 3 when anything was left out")
