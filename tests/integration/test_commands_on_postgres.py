"""The command specifications of the unit suite, run again on the real PostgreSQL and Redis."""

from tests.unit.test_bad_input import (  # noqa: F401
    test_invalid_create_is_refused_with_invalid_params,
    test_writes_without_a_valid_key_are_401,
)
from tests.unit.test_commands import (  # noqa: F401
    test_a_batch_publishes_what_an_earlier_publish_of_its_skus_left_behind,
    test_a_command_shows_running_while_it_is_applied,
    test_a_command_whose_enqueue_failed_is_recorded_and_queued_by_the_recovery_pass,
    test_a_failed_command_keeps_its_outcome_when_a_later_one_on_its_sku_applies,
    test_an_update_to_the_same_values_is_still_a_new_version,
    test_changing_a_missing_widget_fails_with_widget_not_found,
    test_commands_on_one_sku_apply_in_the_order_accepted,
    test_create_is_accepted_with_location_then_applied_by_the_worker,
    test_create_writes_one_widget_created_event_in_the_public_shape,
    test_creating_an_existing_sku_fails_with_widget_exists,
    test_delete_removes_the_row_and_emits_widget_deleted,
    test_if_match_applies_only_at_that_version,
    test_marking_an_applied_command_failed_changes_nothing,
    test_publishes_racing_over_one_sku_keep_its_order_and_add_nothing_twice,
    test_the_relay_publishes_events_committed_but_never_published,
    test_update_changes_only_the_given_fields_and_bumps_the_version,
)
from tests.unit.test_idempotency import (  # noqa: F401
    test_concurrent_duplicates_make_one_command_and_one_widget,
    test_the_same_key_and_body_returns_the_original_command,
    test_the_same_key_with_another_body_is_422_and_changes_nothing,
)
from tests.unit.test_imports import (  # noqa: F401
    test_a_csv_import_reports_bad_rows_and_applies_the_good_ones,
    test_a_json_import_creates_every_widget_and_reports_progress_then_completion,
    test_an_import_takes_its_place_after_commands_accepted_before_it,
    test_an_import_that_cannot_finish_fails_with_its_rows_left_unapplied,
    test_an_import_updates_what_exists_and_leaves_unchanged_rows_alone,
    test_an_import_whose_enqueue_failed_is_run_by_the_recovery_pass,
    test_the_relay_publishes_an_imports_own_events_left_unpublished,
    test_the_same_import_with_the_same_idempotency_key_is_recorded_once,
)
from tests.unit.test_reads import (  # noqa: F401
    test_health_ready_and_schema_are_public,
    test_search_matches_sku_or_name_ignoring_case,
)
