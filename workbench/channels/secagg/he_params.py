"""The one set of BFV parameters every party uses, and the checks on what crosses the wire.

Parameters (pinned; a context with any other parameters is refused):

* scheme BFV (exact integers: no CKKS approximation error, so a decrypted
  total can be published without the CKKS key-recovery risk of IND-CPA^D),
* ``N = 4096`` slots (poly modulus degree), SEAL's default 128-bit-secure
  coefficient modulus for that N (109 bits, primes of 36/36/37 bits),
* plain modulus ``t = 1125899906826241`` (a 50-bit prime, ``t ≡ 1 mod 2N`` so
  slots batch). Slots hold signed integers in ``(-t/2, t/2)``: the largest
  total a slot can carry without wrapping is :data:`MAX_ABS_TOTAL` (≈ 5.6e14).

A public context (public key only: no secret key, no galois or relinearisation
keys, since sums need none) serializes to ~134 KB; one ciphertext to ~89 KB.

Encrypted model evaluation (:mod:`workbench.channels.secagg.he_evaluate`) needs a node to multiply the
analyst's encrypted weights by its (noisy) moments. The BFV set above has a
fresh noise budget of only 15 bits (measured with SEAL's
``invariant_noise_budget``), so it cannot absorb that product. Evaluation uses
a second pinned set, CKKS ``N = 8192``, coefficient modulus ``[60, 40, 60]``
bits (one rescale), scale ``2**40``: public context ~364 KB, fresh ciphertext
~235 KB, a product ~131 KB. Values stay far below the ~2.6e5 where that
modulus wraps (the client scales the weights to guarantee it), and the
client rounds what it decrypts (no raw CKKS decryption is ever published).

Everything here that deserializes TenSEAL objects is meant to run in a worker
process (native code), after the caller has capped the size of the bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from workbench.errors import InvalidQuery, PayloadTooLarge

POLY_MODULUS_DEGREE = 4096
PLAIN_MODULUS = 1125899906826241
MAX_ABS_TOTAL = (PLAIN_MODULUS - 1) // 2
#: Size caps, checked before any deserialization.
MAX_CONTEXT_BYTES = 400_000
MAX_CIPHERTEXT_BYTES = 300_000
SCHEME = "bfv"
#: The CKKS set for encrypted model evaluation.
EVAL_SCHEME = "ckks"
EVAL_POLY_MODULUS_DEGREE = 8192
EVAL_COEFF_BITS = (60, 40, 60)
EVAL_SCALE_BITS = 40
EVAL_MAX_CONTEXT_BYTES = 450_000
#: |value| any evaluation slot may reach before the last modulus (60 bits at scale 2**40) wraps; kept with margin.
EVAL_MAX_ABS = 1.0e5


def params_doc() -> dict:
    """The pinned parameters, as published by nodes and the aggregator."""
    return {"scheme": SCHEME, "poly_modulus_degree": POLY_MODULUS_DEGREE, "coeff_modulus_bits": 109,
            "plain_modulus": PLAIN_MODULUS, "max_abs_total": MAX_ABS_TOTAL, "slots": POLY_MODULUS_DEGREE,
            "max_context_bytes": MAX_CONTEXT_BYTES, "max_ciphertext_bytes": MAX_CIPHERTEXT_BYTES}


def eval_params_doc() -> dict:
    """The pinned CKKS parameters of encrypted model evaluation."""
    return {"scheme": EVAL_SCHEME, "poly_modulus_degree": EVAL_POLY_MODULUS_DEGREE,
            "coeff_modulus_bits": list(EVAL_COEFF_BITS), "scale_bits": EVAL_SCALE_BITS,
            "max_abs_slot": EVAL_MAX_ABS, "max_context_bytes": EVAL_MAX_CONTEXT_BYTES,
            "max_ciphertext_bytes": MAX_CIPHERTEXT_BYTES}


def new_eval_context():
    """A fresh secret CKKS context for model evaluation (the analyst's kernel only)."""
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=EVAL_POLY_MODULUS_DEGREE,
                     coeff_mod_bit_sizes=list(EVAL_COEFF_BITS))
    ctx.global_scale = 2.0 ** EVAL_SCALE_BITS
    return ctx


def new_context():
    """A fresh secret context (the analyst's kernel only: it holds the secret key)."""
    import tenseal as ts

    return ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=POLY_MODULUS_DEGREE, plain_modulus=PLAIN_MODULUS)


def public_bytes(context) -> bytes:
    """The public half of ``context``: public key only (no secret, galois or relinearisation keys)."""
    public = context.copy()
    public.make_context_public()
    return public.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                            save_relin_keys=False)


_REFERENCE_PARMS: dict[str, list] = {}


def _reference_parms_id(scheme: str = SCHEME) -> list:
    if scheme not in _REFERENCE_PARMS:
        ctx = new_context() if scheme == SCHEME else new_eval_context()
        _REFERENCE_PARMS[scheme] = list(ctx.seal_context().data.key_parms_id())
    return _REFERENCE_PARMS[scheme]


def _context_cap(scheme: str) -> int:
    if scheme not in (SCHEME, EVAL_SCHEME):
        raise InvalidQuery(f"Unknown scheme {scheme!r}.", code="bad_context")
    return MAX_CONTEXT_BYTES if scheme == SCHEME else EVAL_MAX_CONTEXT_BYTES


def b64decode(text: str, limit: int, what: str) -> bytes:
    """Decode base64 with a size cap checked on the text first (no decoding of oversized input)."""
    if not isinstance(text, str):
        raise InvalidQuery(f"The {what} must be a base64 string.", code=f"bad_{what}")
    if len(text) > (limit * 4) // 3 + 8:
        raise PayloadTooLarge(f"The {what} is larger than {limit} bytes.", code="payload_too_large")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidQuery(f"The {what} is not valid base64.", code=f"bad_{what}") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"The {what} is larger than {limit} bytes.", code="payload_too_large")
    if not raw:
        raise InvalidQuery(f"The {what} is empty.", code=f"bad_{what}")
    return raw


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def load_public_context(raw: bytes, scheme: str = SCHEME):
    """Deserialize and vet a context sent by someone else (run in a worker).

    Refused (``bad_context``): not loadable, holds a secret key, holds galois or
    relinearisation keys, has no public key, or has other parameters than the
    pinned ones of ``scheme`` (scheme, N, coefficient modulus, plain modulus:
    compared through SEAL's parameter hash).
    """
    import tenseal as ts

    cap = _context_cap(scheme)
    if len(raw) > cap:
        raise PayloadTooLarge(f"The context is larger than {cap} bytes.", code="payload_too_large")
    try:
        ctx = ts.context_from(raw)
    except Exception:  # noqa: BLE001 - any parse failure is the sender's problem
        raise InvalidQuery("The encryption context could not be read.", code="bad_context") from None
    try:
        if not ctx.is_public() or ctx.has_secret_key():
            raise InvalidQuery("The context holds a secret key: send only the public context.", code="bad_context")
        if ctx.has_galois_keys() or ctx.has_relin_keys():
            raise InvalidQuery("The context holds galois or relinearisation keys; sums need neither.",
                               code="bad_context")
        if not ctx.has_public_key():
            raise InvalidQuery("The context has no public key.", code="bad_context")
        parms = list(ctx.seal_context().data.key_parms_id())
        if scheme == EVAL_SCHEME and ctx.global_scale != 2.0 ** EVAL_SCALE_BITS:
            raise InvalidQuery(f"The CKKS context's scale is not 2**{EVAL_SCALE_BITS}.", code="bad_context")
    except InvalidQuery:
        raise
    except Exception:  # noqa: BLE001
        raise InvalidQuery("The encryption context could not be read.", code="bad_context") from None
    if parms != _reference_parms_id(scheme):
        doc = params_doc() if scheme == SCHEME else eval_params_doc()
        raise InvalidQuery(f"The context's parameters are not the pinned ones ({doc}).", code="bad_context")
    return ctx


def load_vector(ctx, raw: bytes, length: int, scheme: str = SCHEME):
    """Deserialize a BFV (or, for ``scheme="ckks"``, CKKS) vector under ``ctx``; check it has ``length`` slots in use."""
    import tenseal as ts

    if len(raw) > MAX_CIPHERTEXT_BYTES:
        raise PayloadTooLarge(f"The ciphertext is larger than {MAX_CIPHERTEXT_BYTES} bytes.",
                              code="payload_too_large")
    try:
        vector = ts.bfv_vector_from(ctx, raw) if scheme == SCHEME else ts.ckks_vector_from(ctx, raw)
        size = vector.size()
    except Exception:  # noqa: BLE001
        raise InvalidQuery("The ciphertext could not be read under the session's context.",
                           code="bad_ciphertext") from None
    if size != length:
        raise InvalidQuery(f"The ciphertext has {size} values, not {length}.", code="bad_ciphertext")
    return vector


# ---------------------------------------------------------------- worker entry points (JSON in, JSON out)


def check_context(payload: dict[str, Any]) -> dict:
    """Worker: vet a base64 public context (of ``payload["scheme"]``, default BFV); returns its sha256."""
    scheme = payload.get("scheme", SCHEME)
    raw = b64decode(payload["context"], _context_cap(scheme), "context")
    load_public_context(raw, scheme)
    return {"context_sha256": sha256(raw), "bytes": len(raw)}


def encrypt(payload: dict[str, Any]) -> dict:
    """Worker: encrypt a vector of integers under a vetted public context."""
    import tenseal as ts

    ctx = load_public_context(b64decode(payload["context"], MAX_CONTEXT_BYTES, "context"))
    values = [int(v) for v in payload["values"]]
    if any(abs(v) > MAX_ABS_TOTAL for v in values) or not 0 < len(values) <= POLY_MODULUS_DEGREE:
        raise InvalidQuery("Values outside the plaintext range.", code="would_overflow")
    raw = ts.bfv_vector(ctx, values).serialize()
    return {"ciphertext": b64encode(raw), "sha256": sha256(raw), "bytes": len(raw)}


def add(payload: dict[str, Any]) -> dict:
    """Worker (aggregator): add ciphertexts of ``length`` slots under a vetted public context."""
    scheme = payload.get("scheme", SCHEME)
    ctx = load_public_context(b64decode(payload["context"], _context_cap(scheme), "context"), scheme)
    length = int(payload["length"])
    total = None
    for text in payload["ciphertexts"]:
        vector = load_vector(ctx, b64decode(text, MAX_CIPHERTEXT_BYTES, "ciphertext"), length, scheme)
        try:
            total = vector if total is None else total + vector
        except Exception:  # noqa: BLE001 - e.g. CKKS scale or level mismatch
            raise InvalidQuery("The contributions cannot be added (scale or level differ).",
                               code="bad_ciphertext") from None
    raw = total.serialize()
    return {"ciphertext": b64encode(raw), "sha256": sha256(raw), "bytes": len(raw)}


def check_ciphertext(payload: dict[str, Any]) -> dict:
    """Worker (aggregator): vet one ciphertext under the session's context."""
    scheme = payload.get("scheme", SCHEME)
    ctx = load_public_context(b64decode(payload["context"], _context_cap(scheme), "context"), scheme)
    raw = b64decode(payload["ciphertext"], MAX_CIPHERTEXT_BYTES, "ciphertext")
    load_vector(ctx, raw, int(payload["length"]), scheme)
    return {"sha256": sha256(raw), "bytes": len(raw)}
