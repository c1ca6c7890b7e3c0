@mutating @doublezero
Feature: DoubleZero binary upgrade (spec step 2 and procedure 1)
  doublezerod is a native sidecar (an initContainer with restartPolicy Always). Patching its image in the
  running pod restarts only the sidecar; agave keeps running and the tunnel's routes stay in the kernel.
  Patching the Deployment template instead would replace the whole pod, agave included. A pod patched in
  place drifts from its template, and the next rollout of the template reverts the sidecar: the runbook
  records that drift.

  @operator
  Scenario: The operator moves the live pod's DoubleZero sidecar to the version given
    Given the live colour's running pod
    When the dz-upgrade procedure runs to the operator's version
    Then every step of the procedure passed
    And the sidecar runs the operator's version in the same pod, and agave was not restarted

  @proof
  Scenario: DZ spec step 2: patching the sidecar image restarts only the sidecar, and the tunnel survives
    Given the green deployment's running pod
    When the doublezerod sidecar image is patched to v0.6.1 in the running pod
    Then only the sidecar restarted, on the new image
    And agave was not restarted
    And the pod's drift from its Deployment template is recorded
    And the doublezero0 routes survived
    When the sidecar is rolled back to its previous image
    Then only the sidecar restarted, on the previous image
    And agave was not restarted
    And the pod no longer drifts from its Deployment template
    And the doublezero0 routes survived

  @proof
  Scenario: DZ procedure 1: the DoubleZero binary upgrade, end to end and rolled back
    Given the green deployment's running pod
    When the dz-upgrade procedure runs to v0.6.1
    Then every step of the procedure passed
    And the sidecar runs v0.6.1 in the same pod, and agave was not restarted
    When the dz-upgrade procedure is rolled back
    Then the sidecar runs its previous image in the same pod, and agave was not restarted
