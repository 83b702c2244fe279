"""theory.certificate / theory.report: every registered name gets a certificate or a reason."""
import pytest

import theory
import zoo
from theory.certificates import _condition_at_defaults


@pytest.mark.parametrize("name", zoo.names())
def test_every_name_has_a_certificate_or_a_reason(name):
    cert = theory.certificate(name)
    assert cert.name == zoo.info(name).name and cert.cautious == zoo.info(name).cautious
    if cert.known:
        assert cert.hamiltonian.startswith("H = ") and cert.lyapunov.startswith("H")
        assert ("L" in cert.lyapunov) == cert.cautious
    else:
        assert cert.reason.startswith("no certificate known: ") and len(cert.reason) > 40
        assert cert.check() == {k: "no certificate" for k in ("symbolic", "numeric", "trajectory")}


def test_cautious_twins_get_the_cautious_dynamics_of_their_base():
    for name in zoo.names(cautious=True):
        twin, base = theory.certificate(name), theory.certificate(zoo.info(name).base)
        assert twin.system == base.system and twin.cautious and not base.cautious


def test_spellings_and_unknown_names():
    assert theory.certificate("C_AdamW").name == "c-adamw"
    with pytest.raises(KeyError):
        theory.certificate("c-adamx")


def test_adam_condition_is_evaluated_at_the_defaults():
    assert _condition_at_defaults("adam", {"betas": (0.9, 0.999)})
    assert not _condition_at_defaults("adam", {"betas": (0.999, 0.9)})   # a = 0.001 < b/4 = 0.025


def test_checks_of_a_cautious_certificate():
    assert theory.certificate("c-sgdm").check() == {
        "symbolic": "proved", "numeric": "no violation found", "trajectory": "non-increasing"}


def test_report_has_one_row_per_name():
    table = theory.report(checks=False)
    assert list(table["name"]) == zoo.names()
    checked = theory.report(["lion", "c-lion", "muon"])
    assert list(checked["symbolic"]) == ["proved", "proved", "no certificate"]
