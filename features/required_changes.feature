@readonly @audit
Feature: The required changes to agave-stack are in place
  The seed lists the changes blue-green needs: doublezerod as a native sidecar, Caddy with health-checked
  dual upstreams (see the Caddy audit), one parameterized spec for both colours, the doublezero DaemonSet
  workaround deleted, the registered identity in the sidecar's volume, the host's doublezerod disabled.

  Scenario: The live pod and the specs carry every required change
    Given the live colour's running pod
    Then doublezerod runs as a native sidecar of the pod
    And the DoubleZero identity file is in the sidecar's config volume, private
    And green and blue are rendered from one parameterized spec
    And no doublezero DaemonSet is running or shipped
    And the host's doublezerod service is stopped and disabled
