"""`sealink witness`: follow gateways' checkpoints over MQTT, check each is consistent with the
last one cosigned, and cosign it (SPEC §14.6). Split views, rollbacks and failing proofs are
refused, alarmed and kept as evidence."""

from sealink.evidence.judge import Cosign, NeedProof, Refuse, Seen, judge, judge_proof
from sealink.witness.config import FollowedGateway, WitnessConfig, load_witness_config
from sealink.witness.service import Witness
from sealink.witness.state import Cosigned, StateDir

__all__ = [
    "Cosign",
    "Cosigned",
    "FollowedGateway",
    "NeedProof",
    "Refuse",
    "Seen",
    "StateDir",
    "Witness",
    "WitnessConfig",
    "judge",
    "judge_proof",
    "load_witness_config",
]
