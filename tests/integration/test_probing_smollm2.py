"""SmolLM2: a French context neuron found by sparse probing on man pages (`lmscope probe` / `lmscope neurons`
on English, French, German and Python, 150 + 50 documents per label) still separates French from English
prose on fresh text, and zeroing it hurts French text much more than English text."""

from __future__ import annotations

import pytest
import torch

from lmscope.data.corpus import Document
from lmscope.data.tokens import tokenize_corpus
from lmscope.features.collect import document_means
from lmscope.features.neurons import ablation_effects, vocab_projection
from lmscope.features.probing import SparseProbe

pytestmark = pytest.mark.integration

FRENCH_NEURON = (13, 1033)  # best 1-sparse French probe (test F1 0.98); lower on French than elsewhere

FRENCH = [
    "Cette commande affiche la liste des fichiers du répertoire courant. Par défaut, les fichiers "
    "cachés ne sont pas affichés ; utilisez l'option -a pour les voir tous.",
    "Le programme lit les données sur l'entrée standard et écrit le résultat sur la sortie standard. "
    "En cas d'erreur, un message est envoyé sur la sortie d'erreur.",
    "Si le fichier de configuration n'existe pas, le service utilise les valeurs par défaut décrites "
    "dans la section suivante de cette page de manuel.",
    "Les options suivantes sont reconnues. Chaque option peut être abrégée tant que l'abréviation "
    "reste sans ambiguïté pour l'utilisateur.",
]
ENGLISH = [
    "This command lists the files in the current directory. By default, hidden files are not shown; "
    "use the -a option to see all of them.",
    "The program reads data from standard input and writes the result to standard output. On error, "
    "a message is printed to standard error.",
    "If the configuration file does not exist, the service uses the default values described in the "
    "following section of this manual page.",
    "The following options are recognized. Each option may be abbreviated as long as the abbreviation "
    "remains unambiguous for the user.",
]


@pytest.fixture(scope="module")
def dataset(smollm2):
    docs = [Document(t, "french", "", f"fr{i}") for i, t in enumerate(FRENCH)]
    docs += [Document(t, "english", "", f"en{i}") for i, t in enumerate(ENGLISH)]
    return tokenize_corpus(smollm2, docs, ctx_len=64, pack=False)


def test_french_neuron_separates_fresh_text(smollm2, dataset):
    layer, neuron = FRENCH_NEURON
    doc = document_means(smollm2, dataset, f"blocks.{layer}.mlp.post")
    X = doc.means[:, 0]  # [n_docs, d_mlp]
    y = torch.tensor([dataset.label_names[i] == "french" for i in doc.labels.tolist()])
    acts = X[:, neuron]
    assert acts[y].max() < acts[~y].min()  # lower on every French document than on any English one
    probe = SparseProbe(1).fit(X[:, [neuron]], y)
    assert probe.f1_score(X[:, [neuron]], y) == 1.0 and float(probe.coef_[0]) < 0
    projection = vocab_projection(smollm2, layer, [neuron], k=5)[0]
    assert len(projection["promoted"]) == 5 and projection["promoted"][0][1] > 0


def test_zeroing_french_neuron_hurts_french_more(smollm2, dataset):
    effect = ablation_effects(smollm2, dataset, {"fr": [FRENCH_NEURON]}, batch_size=8)["fr"]
    delta = effect["loss_delta"]
    assert delta["french"] > 0.01 and delta["french"] > 3 * abs(delta["english"]), delta
