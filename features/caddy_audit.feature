@readonly @audit @caddy
Feature: Caddy ingress configuration audit
  Caddy fronts both colours. agave's /health answers HTTP 200 even while `behind`, `lb_policy first`
  sends everything to the first available upstream, and stopping an upstream that Caddy still believes
  healthy drops requests unless Caddy retries them elsewhere (design section 5, traps 1 to 4). The audit
  reads the live configuration from Caddy's admin API, not a file that may not be what runs, and checks
  each requirement separately so that a bad config shows every setting it misses.

  Scenario Outline: Caddy is configured so that <requirement>
    Given the live Caddy configuration read from the admin API
    Then the audit passes <settings>

    Examples:
      | requirement                                                | settings                                         |
      | both colours are upstreams, the live colour first, under lb_policy first | upstreams, lb_policy               |
      | only a node answering "ok" receives traffic                | health_uri, health_interval, health_body         |
      | a failing upstream is taken out at once                    | fail_duration/max_fails                          |
      | GET and POST are retried, with buffered bodies             | lb_try_duration, lb_retry_match, request_buffers |
      | every response names the upstream that served it           | header_down X-Upstream                           |
      | the upstream order changes without a config reload         | order_switch                                     |
