"""Plain cases of credential redaction: one per hole a review found, and the names it must keep."""

from __future__ import annotations

import pytest

from restate_recovery.redaction import redact_text, says_secret

RRK = "rrk_0123456789abcdef_" + "Zq3-_x" * 7  # this tool's key shape: rrk_<hex id>_<secret>
PNU = "pnu_" + "aB3" * 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 1. a secret query value runs to the next "&", "#", whitespace or quote; ";" is inside it
        ("https://h/x?token=abc;def&page=2", "https://h/x?token=REDACTED&page=2"),
        ("https://h/x#access_token=abc;def", "https://h/x#access_token=REDACTED"),
        ("see https://h/x?password=a;b;c now", "see https://h/x?password=REDACTED now"),
        # ... and ";sig=" after a non-secret parameter is still a parameter of its own
        ("https://h/x?a=1;sig=xyz&page=2", "https://h/x?a=1;sig=REDACTED&page=2"),
        ("https://h/p;jsessionid=ABC123", "https://h/p;jsessionid=REDACTED"),
        # 2. escaped quotes inside a quoted value
        ('password="ab\\"cd" was reset', 'password="REDACTED" was reset'),
        ("secret='it\\'s' was reset", "secret='REDACTED' was reset"),
        ('{"token": "a\\"b secret", "x": 1}', '{"token": "REDACTED", "x": 1}'),
        ("password='it''s' (SQL)", "password='REDACTED' (SQL)"),
        ('{\\"token\\": \\"abc def\\", \\"b\\": 1}', '{\\"token\\": \\"REDACTED\\", \\"b\\": 1}'),
        ('password="unclosed and the rest', 'password="REDACTED'),
        # a URL's userinfo never runs past its closing quote into the next field of JSON or a
        # repr (where it would swallow the next secret's name and leave part of its value)
        ('{"u": "http://x", "token": "ab@cd SECRET"}', '{"u": "http://x", "token": "REDACTED"}'),
        ("{'u': 'http://x', 'password': 'p@ss word'}", "{'u': 'http://x', 'password': 'REDACTED'}"),
        ('http://user:p"w@host/', "http://REDACTED@host/"),  # httpx takes a raw quote in it
        ('http://u:p",x@host/a', "http://REDACTED@host/a"),
        # 3. "[]" in names
        ("https://h/?token[]=abc&page=2", "https://h/?token[]=REDACTED&page=2"),
        ("https://h/?token%5B%5D=abc&page=2", "https://h/?token%5B%5D=REDACTED&page=2"),
        ("auth[token]=x rotated", "auth[token]=REDACTED rotated"),
        ("password[0]=x rotated", "password[0]=REDACTED rotated"),
        ("user[password]=x rotated", "user[password]=REDACTED rotated"),
        # 4. URLs percent-encoded twice, or in lowercase
        (
            "?next=http%253A%252F%252Fuser%253Apw%2540host%252Fx",
            "?next=http%253A%252F%252FREDACTED%2540host%252Fx",
        ),
        ("?next=http%3a%2f%2fuser%3apw%40host%2fx", "?next=http%3a%2f%2fREDACTED%40host%2fx"),
        (
            "?next=https%3A%2F%2Fh%2F%3Ftoken%3Dabc%26x%3D1&a=1",
            "?next=https%3A%2F%2Fh%2F%3Ftoken%3DREDACTED%26x%3D1&a=1",
        ),
        # 5. API keys glued to other text
        (f"key={RRK}", "key=REDACTED"),
        (f"key=x{RRK}", "key=REDACTED"),
        (f"see key: x{RRK}", "see key: REDACTED"),
        (f"see x{RRK} now", "see xREDACTED now"),
        (f"my_{RRK}", "my_REDACTED"),
        (f"({PNU})", "(REDACTED)"),
        (f"id_{PNU}", "id_REDACTED"),
        # 6. names that end with a secret word
        ("access_token=a db_password=b", "access_token=REDACTED db_password=REDACTED"),
        (
            "x-api-key: c client_secret=d token2=e",
            "x-api-key: REDACTED client_secret=REDACTED token2=REDACTED",
        ),
        ("export AWS_SESSION_TOKEN=abc", "export AWS_SESSION_TOKEN=REDACTED"),
        ("sessionToken=abc", "sessionToken=REDACTED"),
        ("Cookie: a=1; sid=2\nHost: h", "Cookie: REDACTED\nHost: h"),
        # 7. short words as the whole name or its last part
        (
            "https://h/?key=x&api_key=x&sig=x&auth=x&X-Amz-Signature=x&session=x&aws_session=x",
            "https://h/?key=REDACTED&api_key=REDACTED&sig=REDACTED&auth=REDACTED"
            "&X-Amz-Signature=REDACTED&session=REDACTED&aws_session=REDACTED",
        ),
        ("https://h/?apiKey=x&signingKey=y", "https://h/?apiKey=REDACTED&signingKey=REDACTED"),
        # 8. Bearer and Basic followed by something shaped like a credential
        ("got Bearer eyJhbGciOi.x.y here", "got Bearer REDACTED here"),
        ("got Basic dXNlcjpwdw== here", "got Basic REDACTED here"),
        ("bearer abc123def456", "bearer REDACTED"),
        ("Authorization: Bearer abc", "Authorization: Bearer REDACTED"),
    ],
)
def test_a_credential_is_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # 6. a secret word that does not end the name
        "tokenizer=bert-base",
        "TokenExchangeWorkflow: 3 retries",
        "secretary=ann",
        "authorName=bob",
        "passwordless=true",
        "password_hash_algo=bcrypt",
        "token_type=refresh",
        # 7. short words inside longer names, and Restate's own keys
        "https://h/?monkey=1&serviceKey=ddwf&keyboard=x&author=x&signal=x",
        "https://h/?serviceName=Identity&serviceKey=k1",
        '{"serviceName": "Identity", "serviceKey": "k1"}',
        "restate.service-key: k1, target_service_key=k2 object_key=k3 idempotency-key: k4",
        "recover-stuck-workflow serviceName=Identity serviceKey=user-42",
        "state_keys=a,b",
        # 8. Bearer and Basic in prose
        "Basic authentication failed for workflows",
        "Bearer tokens are rotated",
        "uses Basic authentication. Switch to Bearer token-based auth",
        # nothing at all
        "doctor: W/k1 failed terminally (at http://REDACTED@h/)",
        "https://svc.example/v1?page=2&limit=10#top",
    ],
)
def test_what_is_no_credential_is_kept(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("access_token", True),
        ("db_password", True),
        ("x-api-key", True),
        ("client_secret", True),
        ("token2", True),
        ("token[]", True),
        ("auth[token]", True),
        ("password[0]", True),
        ("X-Amz-Signature", True),
        ("JSESSIONID", True),
        ("sessionId", True),
        ("userSession", True),
        ("proxyAuth", True),
        ("key", True),
        ("sig", True),
        ("tokenizer", False),
        ("TokenExchangeWorkflow", False),
        ("secretary", False),
        ("authorName", False),
        ("passwordless", False),
        ("password_hash_algo", False),
        ("serviceKey", False),
        ("serviceName", False),
        ("publicKey", False),
        ("monkey", False),
        ("keyboard", False),
        ("author", False),
        ("signal", False),
        ("OAuth", False),
    ],
)
def test_which_names_say_secret(name: str, secret: bool) -> None:
    assert says_secret(name) is secret
