-- The counts of the aggregate reports (TLS-RPT, RFC 8460; DMARC, RFC 7489 §7.2),
-- by UTC day and domain. Every node adds its own counts to the same rows, so that
-- one report per day and domain goes out with everybody's counts. `key` is the
-- SHA-256 of what a row counts (its JSON), as the JSON may be long.

CREATE TABLE report_tls (
    day date NOT NULL,
    domain text NOT NULL,
    key bytea NOT NULL,
    -- The policy the sessions were held to, as JSON.
    policy text NOT NULL,
    -- One kind of failure (JSON), or NULL for the policy's totals.
    failure text,
    success bigint NOT NULL,
    failed bigint NOT NULL,
    PRIMARY KEY (day, domain, key)
);

CREATE TABLE report_dmarc (
    day date NOT NULL,
    domain text NOT NULL,
    key bytea NOT NULL,
    -- One distinct row of the report (source, results, identifiers), as JSON.
    record text NOT NULL,
    messages bigint NOT NULL,
    -- The DMARC record and its report addresses as last seen (JSON).
    policy text NOT NULL,
    rua text NOT NULL,
    PRIMARY KEY (day, domain, key)
);
