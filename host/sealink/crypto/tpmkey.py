"""A P-256 signing key made inside the gateway's TPM 2.0, used there, never out of it.

`TpmKey.create` has the TPM generate an ECC NIST P-256 signing key (ECDSA-SHA256; fixedTPM,
fixedParent, sensitiveDataOrigin: made by this TPM, which never lets it out) under the owner
hierarchy's primary key. The TPM derives that primary from its own seed and a fixed template
each time it is needed, so nothing of it is stored. The file keeps the key as the TPM returned
it, TPM2B_PUBLIC and TPM2B_PRIVATE, the private half encrypted under that primary: any other
TPM refuses to load it. The file is a "TSS2 PRIVATE KEY" PEM (tpm2-pytss's TSSPrivKey), the
form tpm2-openssl and tpm2-tss-engine read, with their parent template.

A TCTI names the TPM as tpm2-tools does: `device:/dev/tpmrm0` (through the kernel's resource
manager, which unloads what a killed gateway left loaded), `swtpm:host=127.0.0.1,port=2321`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

from sealink.crypto.signer import check_private_file, write_private_file
from sealink.errors import KeyFileError, TpmError

__all__ = ["TpmKey", "is_tpm_key_file"]

_COORD = 32
_DIGEST_LEN = 32
_PEM_BEGIN = b"-----BEGIN TSS2 PRIVATE KEY-----"
# `--force` would replace the countersigning key as well, which every verifier pins.
_RENEW = (
    "move the file aside, run `sealink keys init` (it makes only what is missing) and enrol "
    "the seals with the new key"
)
_INSTALL = "install tpm2-pytss (`pip install 'sealink[tpm]'`) and libtss2 (`make setup`)"


def _tss() -> Any:
    """tpm2-pytss, imported only when a TPM is used: a gateway without one needs neither it
    nor the TSS's C libraries."""
    # The TSS's C library logs every failure to stderr on its own; sealink says in one line
    # what failed. A TSS2_LOG the user set (all+debug to see the TPM's traffic) still wins.
    os.environ.setdefault("TSS2_LOG", "all+none")
    try:
        import tpm2_pytss
        import tpm2_pytss.tsskey
    except ImportError as exc:
        raise TpmError(f"no TPM support here ({exc}): {_INSTALL}") from None
    return tpm2_pytss


def is_tpm_key_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(_PEM_BEGIN)) == _PEM_BEGIN
    except OSError:
        return False


def _template(tss: Any) -> Any:
    attrs = tss.TPMA_OBJECT
    ecc = tss.TPMS_ECC_PARMS(
        symmetric=tss.TPMT_SYM_DEF_OBJECT(algorithm=tss.TPM2_ALG.NULL),
        scheme=tss.TPMT_ECC_SCHEME(
            scheme=tss.TPM2_ALG.ECDSA,
            details=tss.TPMU_ASYM_SCHEME(ecdsa=tss.TPMS_SCHEME_HASH(hashAlg=tss.TPM2_ALG.SHA256)),
        ),
        curveID=tss.TPM2_ECC.NIST_P256,
        kdf=tss.TPMT_KDF_SCHEME(scheme=tss.TPM2_ALG.NULL),
    )
    return tss.TPMT_PUBLIC(
        type=tss.TPM2_ALG.ECC,
        nameAlg=tss.TPM2_ALG.SHA256,
        # NODA: the key's authorisation is empty, so the TPM's dictionary-attack lockout would
        # protect nothing, and a TPM locked out by someone else's failures would stop the
        # gateway acknowledging.
        objectAttributes=attrs.FIXEDTPM
        | attrs.FIXEDPARENT
        | attrs.SENSITIVEDATAORIGIN
        | attrs.USERWITHAUTH
        | attrs.SIGN_ENCRYPT
        | attrs.NODA,
        authPolicy=b"",
        parameters=tss.TPMU_PUBLIC_PARMS(eccDetail=ecc),
    )


def _open(tss: Any, tcti: str) -> Any:
    try:
        return tss.ESAPI(tss.TCTILdr.parse(tcti))
    except tss.TSS2_Exception as exc:
        raise TpmError(
            f"TPM {tcti}: cannot reach it ({exc}); check the TCTI (device:/dev/tpmrm0, "
            "swtpm:host=…,port=…) and that this user may use the TPM (group tss)"
        ) from None


def _read_blob(tss: Any, path: Path, what: str) -> Any:
    check_private_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: cannot read ({exc.strerror})") from None
    if not data.startswith(_PEM_BEGIN):
        if b"PRIVATE KEY-----" in data:
            raise KeyFileError(
                f"{what} {path}: a private key in the clear, not one made inside a TPM; "
                f"with [gateway] ack_key_tpm set, {_RENEW}"
            )
        raise KeyFileError(f"{what} {path}: not a TPM-wrapped key (TSS2 PRIVATE KEY PEM)")
    try:
        blob = tss.tsskey.TSSPrivKey.from_pem(data)
    except (ValueError, TypeError, tss.TSS2_Exception) as exc:
        raise KeyFileError(f"{what} {path}: not a TPM-wrapped key ({exc})") from None
    area = blob.public.publicArea
    if area.type != tss.TPM2_ALG.ECC or area.parameters.eccDetail.curveID != tss.TPM2_ECC.NIST_P256:
        raise KeyFileError(f"{what} {path}: not a P-256 key")
    attrs = tss.TPMA_OBJECT
    needed = attrs.FIXEDTPM | attrs.FIXEDPARENT | attrs.SENSITIVEDATAORIGIN | attrs.SIGN_ENCRYPT
    if area.objectAttributes & needed != needed or area.objectAttributes & attrs.RESTRICTED:
        raise KeyFileError(
            f"{what} {path}: not a signing key made inside its TPM (attributes "
            f"{area.objectAttributes})"
        )
    if blob.parent != tss.TPM2_RH.OWNER or not blob.empty_auth:
        raise KeyFileError(f"{what} {path}: under a parent or a password sealink does not use")
    return blob


class TpmKey:
    """A P-256 key loaded into a TPM for this process: `public` (X || Y) and `sign` (r || s)
    as P256Key's. `close()` unloads it; the file stays and loads again."""

    # A command to the TPM and back: ~1 ms on swtpm (`make bench`: seal_checks, ack_sign),
    # tens of ms on a TPM chip, which the event loop must not wait for.
    signs_slowly = True

    def __init__(self, tss: Any, esapi: Any, blob: Any, tcti: str) -> None:
        self.tcti = tcti
        self._tss = tss
        self._esapi = esapi
        ecc = blob.public.publicArea.unique.ecc
        self._public = bytes(ecc.x).rjust(_COORD, b"\0") + bytes(ecc.y).rjust(_COORD, b"\0")
        self._handle = blob.load(esapi)
        self._scheme = tss.TPMT_SIG_SCHEME(
            scheme=tss.TPM2_ALG.ECDSA,
            details=tss.TPMU_SIG_SCHEME(ecdsa=tss.TPMS_SCHEME_HASH(hashAlg=tss.TPM2_ALG.SHA256)),
        )
        # The digest was not made by the TPM: an unrestricted key signs it without a ticket.
        self._ticket = tss.TPMT_TK_HASHCHECK(tag=tss.TPM2_ST.HASHCHECK, hierarchy=tss.TPM2_RH.NULL)

    @classmethod
    def create(cls, tcti: str, path: Path, what: str, *, overwrite: bool = False) -> TpmKey:
        """Have the TPM make a key, write its TPM-wrapped form to `path` (0600), load it."""
        tss = _tss()
        esapi = _open(tss, tcti)
        try:
            try:
                blob = tss.tsskey.TSSPrivKey.create(esapi, _template(tss))
            except tss.TSS2_Exception as exc:
                raise TpmError(f"TPM {tcti}: cannot make a key ({exc})") from None
            write_private_file(path, blob.to_pem(), what, overwrite=overwrite)
            return cls._loaded(tss, esapi, blob, tcti, path, what)
        except BaseException:
            esapi.close()
            raise

    @classmethod
    def load(cls, tcti: str, path: Path, what: str) -> TpmKey:
        tss = _tss()
        blob = _read_blob(tss, path, what)
        esapi = _open(tss, tcti)
        try:
            return cls._loaded(tss, esapi, blob, tcti, path, what)
        except BaseException:
            esapi.close()
            raise

    @classmethod
    def _loaded(cls, tss: Any, esapi: Any, blob: Any, tcti: str, path: Path, what: str) -> TpmKey:
        try:
            return cls(tss, esapi, blob, tcti)
        except tss.TSS2_Exception as exc:
            if exc.error == tss.TPM2_RC.INTEGRITY:
                raise TpmError(
                    f"{what} {path}: the TPM {tcti} did not make it ({exc}): a key file "
                    "copied from another gateway signs nothing here. If this TPM was cleared "
                    f"since, its keys are gone: {_RENEW}"
                ) from None
            raise TpmError(f"{what} {path}: the TPM {tcti} cannot load it ({exc})") from None

    @property
    def public(self) -> bytes:
        """X || Y, 64 bytes: the form the chip's Verify command takes."""
        return self._public

    def sign(self, digest: bytes) -> bytes:
        """r || s over a 32-byte digest, made inside the TPM."""
        if len(digest) != _DIGEST_LEN:
            raise ValueError(f"a digest is {_DIGEST_LEN} bytes, got {len(digest)}")
        tss = self._tss
        try:
            sig = self._esapi.sign(
                self._handle, tss.TPM2B_DIGEST(digest), self._scheme, self._ticket
            )
        except tss.TSS2_Exception as exc:
            raise TpmError(f"TPM {self.tcti}: cannot sign ({exc})") from None
        ecdsa = sig.signature.ecdsa
        r = bytes(ecdsa.signatureR).rjust(_COORD, b"\0")
        return r + bytes(ecdsa.signatureS).rjust(_COORD, b"\0")

    def close(self) -> None:
        esapi, self._esapi = self._esapi, None
        if esapi is None:
            return
        try:
            # A TPM reached without a resource manager (swtpm, /dev/tpm0) keeps what is loaded
            # until it is flushed, whoever loaded it: a few left behind fill its slots.
            esapi.flush_context(self._handle)
        except self._tss.TSS2_Exception:
            pass  # the TPM went away: nothing of this key is left to unload
        finally:
            esapi.close()

    def __enter__(self) -> TpmKey:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TpmKey({self.tcti!r}, public={self._public[:8].hex()}…)"
