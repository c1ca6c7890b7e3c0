@readonly @audit @caddy
Feature: Caddy ingress configuration audit
  Caddy fronts both colours. agave's /health answers HTTP 200 even while `behind`, `lb_policy first`
  sends everything to the first available upstream, and stopping an upstream that Caddy still believes
  healthy drops requests unless Caddy retries them elsewhere (design section 5, traps 1 to 4). The audit
  reads the live configuration from Caddy's admin API, not a file that may not be what runs.

  Scenario: The live Caddy configuration is safe for a blue-green cutover
    Given the live Caddy configuration read from the admin API
    Then both colours are upstreams, green first, under lb_policy first
    And the active health check probes /health often and requires the body "ok"
    And passive health checks take a failing upstream out at once
    And retries are on for GET and POST, with request buffers to replay POST bodies
    And every response names the upstream that served it
