use super::RunControl;

#[test]
fn a_group_stops_only_when_every_member_has() {
    let (a, b) = (RunControl::default(), RunControl::default());
    let group = RunControl::group(&[&a, &b]);
    a.stop();
    a.stop(); // a second stop of one member is not a second member leaving
    assert!(!group.is_stopped());
    b.stop();
    assert!(group.is_stopped());
}

#[test]
fn a_group_of_stopped_members_is_stopped_at_once() {
    let (a, b) = (RunControl::default(), RunControl::default());
    a.stop();
    b.stop();
    assert!(RunControl::group(&[&a, &b]).is_stopped());
}
