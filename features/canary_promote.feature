@mutating @canary
Feature: Canary promotion gated on Prometheus (seed 004)
  The proxy runs as production (zai-proxy, a RollingUpdate Deployment behind its Service) and as a canary
  (zai-proxy-test). Promotion sets production's image to the canary's release without the -canary suffix,
  lets the rolling update run while Prometheus's counts say the new version's error rate is below 5%, its
  p95 has not regressed against production's baseline and it still counts tokens, then tags the release.
  The seed's checklist is ticked by checks on real state. A gate never passes on too little data: that is
  inconclusive, and stops the promotion. A failed gate undoes the rollout automatically.

  @operator
  Scenario: The operator promotes a good canary to production with every checklist item ticked
    Given the canary runs its release
    And a prober sending chat completions through the production Service at 60 requests/s
    And workers have sent 3 chat completions to the canary
    When the canary-promote procedure runs
    Then every step of the promotion passed
    And every checklist item was ticked with its evidence
    And production runs the promoted release on every pod
    And the release is tagged in the release repository
    And the prober saw no failed request through the Service

  @proof
  Scenario: A release that answers errors under production load is undone automatically
    Given the canary runs the errors build of release 1.3.0
    And a prober sending chat completions through the production Service at 60 requests/s
    And workers have sent 3 chat completions to the canary
    When the canary-promote procedure runs, expected to fail at the error rate gate
    Then the promotion failed at that gate and was undone automatically
    And production runs its previous release on every pod
    And no release tag was made

  @proof
  Scenario: A latency regression is caught against production's baseline and undone
    Given the canary runs the slow build of release 1.3.0
    And a prober sending chat completions through the production Service at 60 requests/s
    And workers have sent 3 chat completions to the canary
    When the canary-promote procedure runs, expected to fail at the latency gate
    Then the promotion failed at that gate and was undone automatically
    And production runs its previous release on every pod
    And no release tag was made

  @proof
  Scenario: A canary that lost its token metrics is not promoted
    Given the canary runs the notokens build of release 1.3.0
    And a prober sending chat completions through the production Service at 60 requests/s
    And workers have sent 3 chat completions to the canary
    When the canary-promote procedure runs
    Then the promotion was refused at the checklist: tokens counted on canary
    And no release tag was made

  @proof
  Scenario: Too little traffic to judge is inconclusive, and nothing is promoted
    Given the canary runs its release
    And a prober sending chat completions through the production Service at 2 requests/s
    And workers have sent 3 chat completions to the canary
    When the canary-promote procedure runs
    Then the promotion was refused at the checklist: inconclusive
    And no release tag was made

  @proof
  Scenario: The operator rolls production back to a named revision
    Given production has rolled out 1.3.0 and 1.3.1 after its first release
    When production is rolled back to revision 1
    Then every step of the rollback to that revision passed
    And production runs revision 1's release on every pod
    And the newest revision in the rollout history is the one rolled back to
