"""The routing study (`capsule-study`): its home, which a later issue builds."""
